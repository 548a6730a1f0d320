"""Whole tensors saved at TP=1 load at TP=2 × PP=2 although the vocabulary is padded otherwise
there, and a left-over tensor is refused on every pipeline stage (gloo, 4 ranks).

This file is also its own worker: `test_parallel_review.py OUT_DIR FULL_STATE MODE`.
"""

import sys
from pathlib import Path

import torch

from megatron_mamba.config import ParallelConfig
from megatron_mamba.models.build import build_model
from megatron_mamba.models.presets import preset
from megatron_mamba.parallel.shards import load_full_state, local_shards, merge_shards
from tests.distributed.launch import torchrun

CONFIG = dict(vocab_size=300, tie_embeddings=True)  # 384 rows at TP=1, 512 at TP=2
EMBEDDING = "embedding.word_embeddings.weight"


def _worker(out_dir: Path, full_path: str, mode: str) -> None:
    from megatron.core import parallel_state

    from megatron_mamba.runtime import ParallelSizes, init_runtime, shutdown_runtime

    tp, pp = (1, 1) if mode == "save" else (2, 2)
    init_runtime(ParallelSizes(tensor=tp, pipeline=pp), seed=0)
    model = build_model(preset("tiny-llama", **CONFIG), ParallelConfig(tensor=tp, pipeline=pp))
    if mode == "save":
        whole = {k: torch.randn_like(v) for k, (v, _) in local_shards(model).items()}
        torch.save(whole, full_path)
    elif mode == "extra":
        full = torch.load(full_path, weights_only=True)
        full["decoder.layers.7.mlp.linear_fc2.weight"] = torch.zeros(64, 128)
        try:
            load_full_state(model, full)
        except ValueError as error:
            print(f"refused: {error}")
    else:
        load_full_state(model, torch.load(full_path, weights_only=True))
        rank = torch.distributed.get_rank()
        shards = {k: (v, tuple(p)) for k, (v, p) in local_shards(model).items()}
        tp_rank = parallel_state.get_tensor_model_parallel_rank()
        torch.save({"tp_rank": tp_rank, "shards": shards}, out_dir / f"rank{rank}.pt")
    shutdown_runtime()


def _whole_at_tp1(tmp_path: Path) -> tuple[Path, dict]:
    path = tmp_path / "full.pt"
    torchrun(Path(__file__), 1, tmp_path, path, "save")
    whole = torch.load(path, weights_only=True)
    assert whole[EMBEDDING].shape[0] == 384
    return path, whole


def test_a_tp1_file_loads_at_tp2_pp2_whatever_the_vocab_padding(tmp_path):
    path, whole = _whole_at_tp1(tmp_path)
    torchrun(Path(__file__), 4, tmp_path, path, "load")
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(4)]
    merged = merge_shards([r["shards"] for r in ranks], [r["tp_rank"] for r in ranks])
    assert sorted(merged) == sorted(whole)
    assert merged[EMBEDDING].shape[0] == 512
    torch.testing.assert_close(merged[EMBEDDING][:384], whole[EMBEDDING], rtol=0, atol=0)
    assert not merged[EMBEDDING][384:].any()
    for key, tensor in whole.items():
        if key != EMBEDDING:
            torch.testing.assert_close(merged[key], tensor, rtol=0, atol=0, msg=key)


def test_a_left_over_tensor_is_refused_on_every_stage(tmp_path):
    path, _ = _whole_at_tp1(tmp_path)
    output = torchrun(Path(__file__), 4, tmp_path, path, "extra", timeout=300)
    assert output.count("refused: the full state holds 1 tensor(s) the model does not have") == 4
    assert "'decoder.layers.7.mlp.linear_fc2.weight'" in output


if __name__ == "__main__":
    _worker(Path(sys.argv[1]), sys.argv[2], sys.argv[3])
