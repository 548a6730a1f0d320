"""Turn an attention model's native state into a hybrid's: the layer pattern picks the layers whose
attention becomes a Mamba mixer, fresh or initialised from that attention as MambaInLlama does
(x ← V, B ← K, C ← Q, out ← O; z, conv, dt, A, D and the norm stay fresh).

Works on whole tensors in native names, so it serves GPTNeoX's fused QKV and Llama's separate
projections alike (both arrive in megatron's per-group [q…, k, v] layout) and any TP/PP after.
"""

from __future__ import annotations

import torch

from megatron_mamba.config import ModelConfig
from megatron_mamba.convert.layouts import split_qkv
from megatron_mamba.models.mamba_dims import mamba1_dims, mamba2_dims


def _in_proj_blocks(kind: str, model: ModelConfig) -> tuple[list[str], tuple[int, ...]]:
    """Block names and sizes of a mixer's fused in_proj, in row order."""
    if kind == "mamba1":
        dims = mamba1_dims(model)
        if not dims.grouped:
            raise ValueError("mamba1 in the classic layout has no K/Q-shaped B/C to initialise")
        return ["x", "z", "B", "C"], dims.in_proj_segments
    return ["z", "x", "B", "C", "dt"], mamba2_dims(model).in_proj_segments


def mixer_from_attention(
    kind: str,
    attention: dict[str, torch.Tensor],
    fresh: dict[str, torch.Tensor],
    model: ModelConfig,
    layer: int,
) -> dict[str, torch.Tensor]:
    """A mamba1/mamba2 mixer's tensors (names relative to the mixer) with x/B/C rows of in_proj
    and out_proj taken from the attention's V/K/Q and O; every other tensor is `fresh`'s."""
    names, sizes = _in_proj_blocks(kind, model)
    out = dict(fresh)
    for kind_ in ("weight", "bias"):
        qkv = attention.get(f"linear_qkv.{kind_}")
        target = f"in_proj.{kind_}"
        if qkv is None:
            continue
        if target not in fresh:
            raise ValueError(
                f"layer {layer}: the attention has QKV biases but the {kind} mixer has none; "
                "set mamba.proj_bias to true (or leave it unset) to carry them over"
            )
        q, k, v = split_qkv(qkv, model)
        blocks = dict(zip(names, fresh[target].split(list(sizes)), strict=True))
        blocks.update(x=v, B=k, C=q)
        out[target] = torch.cat([blocks[n] for n in names]).to(fresh[target].dtype)
        out[f"out_proj.{kind_}"] = attention[f"linear_proj.{kind_}"].to(fresh[target].dtype)
    return out


def hybrid_from_attention(
    attention_state: dict[str, torch.Tensor],
    fresh_hybrid_state: dict[str, torch.Tensor],
    model: ModelConfig,
) -> dict[str, torch.Tensor]:
    """The hybrid model's whole native state: everything from the attention model, except the
    mixers of the pattern's Mamba layers, which come from `fresh_hybrid_state` (initialised from
    the attention when model.mamba.init is "attention")."""
    out = {}
    for name, tensor in attention_state.items():
        if not name.startswith("decoder.layers.") or ".mixer." not in name:
            out[name] = tensor
            continue
        layer = int(name.split(".")[2])
        if model.mixers[layer] == "attention":
            out[name] = tensor
    for layer, kind in enumerate(model.mixers):
        if kind == "attention":
            continue
        prefix = f"decoder.layers.{layer}.mixer."
        fresh = {k[len(prefix) :]: v for k, v in fresh_hybrid_state.items() if k.startswith(prefix)}
        if model.mamba.init == "attention":
            attention = {
                k[len(prefix) :]: v for k, v in attention_state.items() if k.startswith(prefix)
            }
            fresh = mixer_from_attention(kind, attention, fresh, model, layer)
        out.update({prefix + k: v for k, v in fresh.items()})
    missing = sorted(fresh_hybrid_state.keys() - out.keys())
    if missing:
        raise KeyError(f"the attention state lacks {len(missing)} tensor(s), e.g. {missing[:3]}")
    return out
