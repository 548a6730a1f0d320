"""An imported checkpoint loads at TP=2 and PP=2 with transformers' logits, also where megatron
pads the vocabulary differently for the new TP size (100 tokens: 128 rows at TP=1, 256 at TP=2)."""

from pathlib import Path

import pytest
import torch
from transformers import (
    AutoModelForCausalLM,
    GPTNeoXConfig,
    GPTNeoXForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
)

import megatron_mamba.hf  # noqa: F401  (registers the hybrid classes with transformers' Auto*)
from tests.distributed.launch import REPO, run_script, torchrun
from tests.helpers.hf_tiny import _GQA_SHAPE, randomize_norms

WORKER = Path(__file__).parent / "workers" / "checkpoint_logits.py"
VOCAB = 100


def _gpt_neox():
    config = GPTNeoXConfig(
        vocab_size=VOCAB,
        hidden_size=64,
        num_hidden_layers=4,
        num_attention_heads=4,
        intermediate_size=256,
        rope_parameters={
            "rope_type": "default",
            "rope_theta": 10000.0,
            "partial_rotary_factor": 0.25,
        },
    )
    return GPTNeoXForCausalLM(config).eval()


def _llama():
    config = LlamaConfig(
        **{**_GQA_SHAPE, "vocab_size": VOCAB}, num_hidden_layers=4, tie_word_embeddings=True
    )
    return LlamaForCausalLM(config).eval()


def _mistral():
    config = MistralConfig(
        **{**_GQA_SHAPE, "vocab_size": VOCAB}, num_hidden_layers=4, sliding_window=32
    )
    return MistralForCausalLM(config).eval()


CASES = {  # each architecture at TP=2 and at PP=2
    "gpt_neox-tp2": (_gpt_neox, None, None, 2, 1),
    "llama-tp2": (_llama, None, None, 2, 1),
    "mistral_hybrid-tp2pp2": (_mistral, "AMSA", dict(layout="attention", init="attention"), 2, 2),
    "llama_hybrid-pp2": (_llama, "SAMA", dict(layout="attention", init="attention"), 1, 2),
    "gpt_neox_hybrid-tp2pp2": (
        _gpt_neox,
        "AMSA",
        dict(layout="classic", head_dim=16, d_state=16, groups=2),
        2,
        2,
    ),
}


def _tool(name: str, *args) -> None:
    """A conversion command line in its own process (this one keeps no process group, whose
    port the example scripts' single-process runs would otherwise inherit)."""
    run_script(REPO / "tools" / f"{name}.py", *args)


@pytest.mark.parametrize("case", CASES)
def test_imported_checkpoint_loads_at_other_layouts(tmp_path, case):
    factory, pattern, mamba, tp, pp = CASES[case]
    hf = factory()
    randomize_norms(hf)
    hf.save_pretrained(tmp_path / "hf")
    options = ["--layer-pattern", pattern] if pattern else []
    options += [f"--mamba={k}={v}" for k, v in (mamba or {}).items()]
    _tool("convert_hf_to_native", tmp_path / "hf", tmp_path / "native", *options)
    if pattern is not None:  # the hybrid's transformers export is the reference
        _tool("convert_native_to_hf", tmp_path / "native", tmp_path / "export")
        hf = AutoModelForCausalLM.from_pretrained(tmp_path / "export").eval()
    tokens = torch.randint(0, VOCAB, (2, 12), generator=torch.Generator().manual_seed(0))
    torch.save(tokens, tmp_path / "tokens.pt")
    out = tmp_path / "logits.pt"
    torchrun(
        WORKER,
        tp * pp,
        str(tmp_path / "native"),
        str(tp),
        str(pp),
        str(tmp_path / "tokens.pt"),
        str(out),
    )
    with torch.no_grad():
        expected = hf(tokens).logits
    got = torch.load(out, weights_only=True)
    rel = ((got - expected).abs().max() / expected.abs().max()).item()
    assert rel <= 1e-5, f"relative error {rel:.2e}"
