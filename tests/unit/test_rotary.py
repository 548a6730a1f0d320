"""The RoPE route: models built by build_model send megatron's SelfAttention through
models/rotary.py, which runs megatron's own function wherever the Triton kernel does not apply
(here: on CPU, even where the kernel is asked for)."""

import torch
from megatron.core.models.common.embeddings.rope_utils import _apply_rotary_pos_emb_bshd
from megatron.core.transformer import attention as megatron_attention

from megatron_mamba.models import rotary
from tests.helpers.hf_tiny import native_twin, tiny_llama


def test_built_models_route_rope_through_ours_and_cpu_keeps_megatrons(runtime, monkeypatch):
    model, _ = native_twin(tiny_llama())
    assert megatron_attention.apply_rotary_pos_emb is rotary.apply_rotary_pos_emb
    monkeypatch.setenv("MEGATRON_MAMBA_ROPE_KERNEL", "1")
    t = torch.randn(6, 2, 3, 8)
    freqs = torch.rand(6, 1, 1, 4) * 3
    got = rotary.apply_rotary_pos_emb(t, freqs, config=model.config)
    assert torch.equal(got, _apply_rotary_pos_emb_bshd(t, freqs))
