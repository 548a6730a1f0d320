"""Turn an attention model's native state into a hybrid's: the layer pattern picks the layers whose
attention becomes a Mamba mixer, fresh or initialised from that attention as MambaInLlama does
(x ← V, B ← K, C ← Q, out ← O; z, conv, dt, A, D and the norm stay fresh).

Works on whole tensors in native names, so it serves GPTNeoX's fused QKV and Llama's separate
projections alike (both arrive in megatron's per-group [q…, k, v] layout) and any TP/PP after.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from megatron_mamba.config import ModelConfig, ParallelConfig
from megatron_mamba.convert.layouts import split_qkv
from megatron_mamba.models.build import to_transformer_config
from megatron_mamba.models.mamba_dims import mamba1_dims, mamba2_dims
from megatron_mamba.models.mixers import MIXERS


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


def fresh_mixer(kind: str, model: ModelConfig, layer: int, seed: int) -> dict[str, torch.Tensor]:
    """A newly initialised mixer's tensors (names relative to the mixer), seeded per layer, so
    a conversion gives the same weights whatever else it converts."""
    torch.manual_seed(seed * 100_003 + layer)
    spec = MIXERS[kind](model)
    config = to_transformer_config(model, ParallelConfig())
    mixer = spec.module(config=config, layer_number=layer + 1, **spec.params)
    return {k: v for k, v in mixer.state_dict().items() if not k.endswith("_extra_state")}


def swapped_layers(source: ModelConfig, target: ModelConfig) -> list[int]:
    """Layers that are attention in `source` and Mamba in `target`; a layer that is Mamba in
    the source must stay the same mixer (its weights cannot become attention)."""
    swapped = []
    for i, (was, now) in enumerate(zip(source.mixers, target.mixers, strict=True)):
        if was != "attention" and was != now:
            raise ValueError(
                f"layer {i} is {was} in the source checkpoint; the pattern "
                f"{target.layer_pattern!r} makes it {now}, but only attention layers can be swapped"
            )
        if was != now:
            swapped.append(i)
    return swapped


def swap_mixers(
    source_state: dict[str, torch.Tensor],
    source: ModelConfig,
    target: ModelConfig,
    new_mixer: Callable[[str, int], dict[str, torch.Tensor]],
) -> dict[str, torch.Tensor]:
    """The target model's whole native state from the source's: each layer that is attention in
    the source and Mamba in the target gets `new_mixer(kind, layer)` (names relative to the
    mixer), initialised from that attention when target.mamba.init is "attention"; every other
    tensor is the source's, so Mamba layers the source already has keep their trained weights
    (progressive distillation)."""
    swapped = swapped_layers(source, target)
    prefixes = tuple(f"decoder.layers.{layer}.mixer." for layer in swapped)
    out = {name: t for name, t in source_state.items() if not name.startswith(prefixes)}
    for layer, prefix in zip(swapped, prefixes, strict=True):
        kind = target.mixers[layer]
        mixer = new_mixer(kind, layer)
        if target.mamba.init == "attention":
            attention = {
                k[len(prefix) :]: v for k, v in source_state.items() if k.startswith(prefix)
            }
            mixer = mixer_from_attention(kind, attention, mixer, target, layer)
        out.update({prefix + k: v for k, v in mixer.items()})
    return out
