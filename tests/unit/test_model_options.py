"""Activation recomputation leaves loss and gradients unchanged; bf16/fp16 track fp32."""

import pytest
import torch

from megatron_mamba.config import ParallelConfig, RunPrecision
from megatron_mamba.models.build import build_model
from megatron_mamba.models.presets import preset
from megatron_mamba.parallel.shards import load_full_state, local_shards


def _loss_and_grads(name: str, precision: RunPrecision, full_state=None):
    model = build_model(preset(name, num_layers=3), ParallelConfig(), precision)
    if full_state is not None:
        load_full_state(model, full_state)
    model.train()
    tokens = torch.randint(0, 256, (2, 17), generator=torch.Generator().manual_seed(0))
    loss = model(tokens[:, :-1], None, None, labels=tokens[:, 1:]).float().mean()
    loss.backward()
    grads = {k: v.float() for k, (v, _) in local_shards(model, grads=True).items()}
    return loss.detach(), grads, {k: v.float() for k, (v, _) in local_shards(model).items()}


@pytest.mark.parametrize("name", ["tiny-gpt-neox", "tiny-llama"])
@pytest.mark.parametrize("recompute", ["full", "selective"])
def test_recomputation_changes_nothing(runtime, name, recompute):
    loss, grads, weights = _loss_and_grads(name, RunPrecision())
    again, grads_again, _ = _loss_and_grads(name, RunPrecision(recompute=recompute), weights)
    torch.testing.assert_close(again, loss)
    for key, grad in grads.items():
        torch.testing.assert_close(grads_again[key], grad, msg=key)


@pytest.mark.parametrize("dtype", ["bf16", "fp16"])
def test_half_precision_tracks_fp32(runtime, dtype):
    loss, grads, weights = _loss_and_grads("tiny-llama", RunPrecision())
    half, half_grads, _ = _loss_and_grads("tiny-llama", RunPrecision(dtype), weights)
    assert next(iter(half_grads.values())).numel() > 0
    torch.testing.assert_close(half, loss, rtol=2e-2, atol=2e-2)
