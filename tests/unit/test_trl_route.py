"""The Zephyr route through transformers: a Mistral hybrid exported here runs TRL's SFTTrainer
and DPOTrainer, comes back as a native checkpoint with the trained weights, and trains on
natively from exactly them."""

import json

import numpy as np
import pytest
import torch
import yaml
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer, MistralConfig, MistralForCausalLM

import megatron_mamba.hf  # noqa: F401  (registers the hybrid classes with transformers' Auto*)
from megatron_mamba.convert.exporter import export_hf
from megatron_mamba.convert.importer import import_hf
from tests.distributed.launch import REPO, torchrun
from tests.distributed.train_runs import ITEM, write_items
from tests.helpers.hf_tiny import _GQA_SHAPE, randomize_norms
from tests.helpers.tiny_tokenizer import make_tokenizer

trl = pytest.importorskip("trl")

VOCAB = 384  # a multiple of 128: no vocabulary padding, so native and transformers CE agree


def _chats(count: int) -> Dataset:
    turn = [
        {"role": "user", "content": "What does a state space model keep?"},
        {"role": "assistant", "content": "A small summary of what it has seen."},
    ]
    return Dataset.from_list([{"messages": turn}] * count)


def _preferences(count: int) -> Dataset:
    row = {
        "prompt": [{"role": "user", "content": "What does attention cost?"}],
        "chosen": [{"role": "assistant", "content": "Memory that grows with the text."}],
        "rejected": [{"role": "assistant", "content": "Nothing at all."}],
    }
    return Dataset.from_list([row] * count)


def _changed(before: dict, after: dict, part: str) -> bool:
    names = [n for n in before if part in n]
    assert names, part
    return any(not torch.equal(before[n], after[n]) for n in names)


def test_export_sft_dpo_import_and_train_natively(runtime, tmp_path):
    tokenizer = AutoTokenizer.from_pretrained(make_tokenizer(tmp_path / "hf"))
    config = MistralConfig(
        **{**_GQA_SHAPE, "vocab_size": VOCAB, "max_position_embeddings": 256},
        num_hidden_layers=3,
        sliding_window=128,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    source = MistralForCausalLM(config)
    randomize_norms(source)
    source.save_pretrained(tmp_path / "hf")
    mamba = dict(layout="attention", init="attention")
    import_hf(
        tmp_path / "hf", tmp_path / "native", layer_pattern="MAS", mamba=mamba, progress=False
    )
    export_hf(tmp_path / "native", tmp_path / "export", progress=False)

    exported = AutoModelForCausalLM.from_pretrained(tmp_path / "export")
    assert type(exported).__name__ == "MistralHybridForCausalLM"
    start = {n: p.detach().clone() for n, p in exported.named_parameters()}
    common = dict(max_steps=2, per_device_train_batch_size=2, learning_rate=1e-3)
    common.update(report_to=[], use_cpu=True, save_strategy="no", max_length=128)
    sft = trl.SFTTrainer(
        model=exported,
        args=trl.SFTConfig(output_dir=str(tmp_path / "sft"), **common),
        train_dataset=_chats(8),
        processing_class=tokenizer,
    )
    sft.train()
    sft.save_model(str(tmp_path / "sft"))
    after_sft = {n: p.detach().clone() for n, p in sft.model.named_parameters()}
    assert _changed(start, after_sft, ".mamba.") and _changed(start, after_sft, "self_attn")

    dpo = trl.DPOTrainer(
        model=AutoModelForCausalLM.from_pretrained(tmp_path / "sft"),
        args=trl.DPOConfig(output_dir=str(tmp_path / "dpo"), beta=0.1, **common),
        train_dataset=_preferences(8),
        processing_class=tokenizer,
    )
    dpo.train()
    assert any("rewards/margins" in record for record in dpo.state.log_history)
    dpo.save_model(str(tmp_path / "dpo"))
    aligned = AutoModelForCausalLM.from_pretrained(tmp_path / "dpo").eval()
    assert _changed(after_sft, dict(aligned.named_parameters()), ".mamba.")

    import_hf(tmp_path / "dpo", tmp_path / "back", progress=False)
    model_fields = yaml.safe_load((tmp_path / "back" / "model.yaml").read_text())
    assert model_fields["layer_pattern"] == "MAS"

    # Two native steps from the imported weights; the first loss (before any update) is the
    # DPO model's own cross-entropy on that batch.
    data = write_items(tmp_path / "items")
    run_config = tmp_path / "run.yaml"
    run_config.write_text(yaml.safe_dump({"model": model_fields}))
    settings = {
        "data.path": data,
        "data.item_length": ITEM,
        "train.mixed_precision": "no",
        "train.max_steps": 2,
        "train.per_device_train_batch_size": 4,
        "train.init_from": tmp_path / "back",
        "train.output_dir": tmp_path,
        "train.run_name": "trained",  # not "native": the import there is kept
    }
    train = REPO / "megatron_mamba" / "train.py"
    torchrun(train, 1, "--config", str(run_config), *(f"{k}={v}" for k, v in settings.items()))
    lines = (tmp_path / "trained" / "metrics.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert [r["step"] for r in records] == [1, 2]
    tokens = np.fromfile(f"{data}.bin", dtype=np.uint16)[: 4 * ITEM].astype(np.int64)
    batch = torch.from_numpy(tokens.reshape(4, ITEM))  # the first step's micro-batch
    with torch.no_grad():
        expected = aligned(batch, labels=batch).loss.item()
    assert records[0]["loss"] == pytest.approx(expected, rel=1e-5)
