"""Where our Triton kernels are routed in: models built by build_model send megatron's
SelfAttention's RoPE through models/rotary.py, and the MLP's activations go through
models/fused.py; both run the torch versions wherever a kernel does not apply (here: on CPU)."""

import torch
import torch.nn.functional as F
from megatron.core.models.common.embeddings.rope_utils import _apply_rotary_pos_emb_bshd
from megatron.core.transformer import attention as megatron_attention

from megatron_mamba.models import fused, rotary
from tests.helpers.hf_tiny import native_twin, tiny_llama


def test_built_models_route_rope_through_ours_and_cpu_keeps_megatrons(runtime, monkeypatch):
    model, _ = native_twin(tiny_llama())
    assert megatron_attention.apply_rotary_pos_emb is rotary.apply_rotary_pos_emb
    t = torch.randn(6, 2, 3, 8)
    freqs = torch.rand(6, 1, 1, 4) * 3
    got = rotary.apply_rotary_pos_emb(t, freqs, config=model.config)
    assert torch.equal(got, _apply_rotary_pos_emb_bshd(t, freqs))


def test_mlp_activations_on_cpu_are_torchs():
    x, bias = torch.randn(3, 5, 8), torch.randn(8)
    assert torch.equal(fused.bias_gelu(x, bias), F.gelu(x + bias))
    gate, up = x.chunk(2, dim=-1)
    assert torch.equal(fused.swiglu(x), F.silu(gate) * up)
