"""FLOP counts for MFU: a Mamba mixer's count covers exactly the weights of the built mixer."""

import pytest

from megatron_mamba.config import ParallelConfig
from megatron_mamba.models.build import build_model
from megatron_mamba.models.mamba_dims import mamba1_dims, mamba2_dims
from megatron_mamba.models.presets import preset
from megatron_mamba.models.size import (
    _mamba_forward_flops,
    attention_parameters,
    block_parameters,
    training_flops_per_token,
)


@pytest.mark.parametrize("symbol", ["M", "S"])
@pytest.mark.parametrize("layout", ["classic", "attention"])
def test_mamba_flops_count_every_weight_of_the_built_mixer(runtime, symbol, layout):
    cfg = preset("tiny-llama", layer_pattern=symbol * 2, mamba={"layout": layout})
    mixer = build_model(cfg, ParallelConfig()).decoder.layers[0].mixer
    # every multiply-add: the projections' matrices and the depthwise conv's taps
    macs = sum(p.numel() for n, p in mixer.named_parameters() if p.ndim >= 2 and n != "A_log")
    if symbol == "M":
        dims, scan_per_state = mamba1_dims(cfg), 8
    else:
        dims, scan_per_state = mamba2_dims(cfg), 6
    name = "mamba1" if symbol == "M" else "mamba2"
    scan = scan_per_state * dims.d_inner * dims.d_state
    assert _mamba_forward_flops(cfg, name) == 2 * macs + scan


def test_hybrid_flops_swap_one_layer_cost():
    attention = preset("tiny-gpt-neox", layer_pattern="AA")
    hybrid = preset("tiny-gpt-neox", layer_pattern="MA")
    seq = 32
    attention_layer = 2 * attention_parameters(attention) + 2 * seq * 64
    difference = training_flops_per_token(attention, seq) - training_flops_per_token(hybrid, seq)
    assert difference == 3 * (attention_layer - _mamba_forward_flops(hybrid, "mamba1"))
    assert training_flops_per_token(attention, seq) == 3 * (
        2 * 256 * 64 + 2 * (2 * block_parameters(attention) + attention_layer)
    )
