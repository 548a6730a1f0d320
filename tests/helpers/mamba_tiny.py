"""Tiny standalone Mamba mixers (ours) and the transformers mixers that are their references."""

from __future__ import annotations

import torch
from einops import repeat
from transformers.models.mamba.modeling_mamba import MambaMixer
from transformers.models.mamba2.modeling_mamba2 import Mamba2Mixer as HFMamba2Mixer

from megatron_mamba.config import ModelConfig, ParallelConfig
from megatron_mamba.convert.hf_mamba_config import (
    transformers_mamba2_config,
    transformers_mamba_config,
)
from megatron_mamba.models.build import to_transformer_config
from megatron_mamba.models.mamba1 import Mamba1Mixer
from megatron_mamba.models.mamba2 import Mamba2Mixer
from megatron_mamba.models.mamba_dims import Mamba2Dims, mamba1_dims, mamba2_dims
from megatron_mamba.models.presets import preset


def tiny_model_config(layout: str = "classic", arch: str = "llama", **mamba) -> ModelConfig:
    """A GQA Llama (4 heads, 2 KV heads, head_dim 16) or an MHA GPTNeoX, hidden 64."""
    name = "tiny-llama" if arch == "llama" else "tiny-gpt-neox"
    extra = {"head_dim": 32} if mamba.pop("wide_heads", False) else {}
    return preset(name, mamba={"layout": layout, **mamba}, **extra)


def native_mixer(kind: str, model: ModelConfig, tp: int = 1, sp: bool = False):
    """Our mamba1/mamba2 mixer for `model`, on this process's TP rank."""
    config = to_transformer_config(model, ParallelConfig(tensor=tp, sequence_parallel=sp))
    if kind == "mamba1":
        return Mamba1Mixer(config, mamba1_dims(model), model.mamba)
    return Mamba2Mixer(config, mamba2_dims(model), model.mamba)


def weights(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Parameters by name, without megatron's `_extra_state` entries."""
    return {k: v for k, v in module.state_dict().items() if not k.endswith("_extra_state")}


@torch.no_grad()
def randomize(module: torch.nn.Module, seed: int = 0, scale: float = 0.3) -> None:
    """Every parameter random (D, norm weights and biases included), A_log kept sensible."""
    generator = torch.Generator().manual_seed(seed)
    for name, param in module.named_parameters():
        noise = torch.randn(param.shape, generator=generator, dtype=torch.float32)
        if name.endswith("A_log"):
            param.copy_(torch.log(torch.rand(param.shape, generator=generator) * 3 + 0.5))
        elif name.endswith("dt_proj.bias") or name.endswith("dt_bias"):
            param.copy_(noise * 0.5 - 2.0)
        else:
            param.copy_(noise * scale)


def hf_mamba1(mixer: Mamba1Mixer) -> MambaMixer:
    """transformers' MambaMixer holding our (classic, TP=1) mixer's weights; names are shared."""
    hf = MambaMixer(transformers_mamba_config(mixer.dims), layer_idx=0)
    hf.load_state_dict(weights(mixer), strict=True)
    return hf.eval()


def _expand_rows(w: torch.Tensor, width: int, times: int) -> torch.Tensor:
    """Repeat each block of `width` rows `times` times in place (x heads, B groups)."""
    return repeat(w, "(g n) ... -> (g r n) ...", n=width, r=times)


def hf_mamba2(mixer: Mamba2Mixer) -> HFMamba2Mixer:
    """transformers' Mamba2Mixer computing our (TP=1) mixer: where x and B are narrower than the
    heads and C (the attention layout) their rows are repeated first, which is exact because the
    conv is depthwise."""
    d: Mamba2Dims = mixer.dims
    hf = HFMamba2Mixer(transformers_mamba2_config(d), layer_idx=0)
    ours = weights(mixer)
    rx, rb = d.heads // d.x_heads, d.c_groups // d.b_groups

    def expand(t: torch.Tensor, prefix_rows: int) -> torch.Tensor:
        head, x, B, C, tail = t.split(
            [prefix_rows, *d.conv_segments, t.shape[0] - prefix_rows - sum(d.conv_segments)]
        )
        x, B = _expand_rows(x, d.head_dim, rx), _expand_rows(B, d.d_state, rb)
        return torch.cat([head, x, B, C, tail])

    state = dict(ours)
    for key in ("in_proj.weight", "in_proj.bias"):
        if key in ours:
            state[key] = expand(ours[key], d.d_inner)
    for key in ("conv1d.weight", "conv1d.bias"):
        if key in ours:
            state[key] = expand(ours[key], 0)
    hf.load_state_dict(state, strict=True)
    return hf.eval()
