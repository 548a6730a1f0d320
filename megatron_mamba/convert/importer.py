"""transformers checkpoint directory → native checkpoint, applying a layer pattern.

Layers the pattern keeps as they are in the source are copied through the table. Attention layers
the pattern turns into Mamba get a fresh mixer (seeded per layer), initialised from that layer's
attention when `mamba.init` is "attention"; their norms and MLP are copied. Tensors stream one at
a time from the source files into the output, which is written to a temporary directory and renamed
at the end. The result loads at any TP/PP.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from megatron_mamba.config import MambaConfig, ModelConfig, ParallelConfig
from megatron_mamba.config_io import build, to_dict
from megatron_mamba.convert.attention_to_mamba import (
    fresh_mixer,
    mixer_from_attention,
    swapped_layers,
)
from megatron_mamba.convert.hf_files import (
    HFCheckpoint,
    check_output,
    copy_tokenizer,
    output_directory,
)
from megatron_mamba.convert.mapping import Context, MappingError, Table, expand, resolve, to_native
from megatron_mamba.convert.native_files import parameter_layout, write_native
from megatron_mamba.convert.sources import source_model_config, source_token_ids
from megatron_mamba.convert.tables import table_for
from megatron_mamba.models.build import validate_parallel
from megatron_mamba.runtime.distributed import ParallelSizes, init_runtime

_MIXER = re.compile(r"^decoder\.layers\.(\d+)\.mixer\.(.+)$")


def target_config(
    source: ModelConfig, layer_pattern: str | None, mamba: dict[str, Any] | None
) -> ModelConfig:
    """The source's configuration with a new pattern (None: the source's) and Mamba settings; a
    layer that is Mamba in the source must stay the same mixer (weights cannot become
    attention)."""
    if layer_pattern is not None and not layer_pattern.strip():  # not silently the source's
        raise ValueError(
            f"the layer pattern {layer_pattern!r} is empty; expected one symbol per layer "
            f"(A attention, M mamba1, S mamba2), or none to keep the source's "
            f"{source.layer_pattern}"
        )
    settings = {**to_dict(source.mamba), **(mamba or {})}
    target = dataclasses.replace(
        source,
        layer_pattern=source.layer_pattern if layer_pattern is None else layer_pattern,
        mamba=build(MambaConfig, settings, "mamba"),
    )
    swapped_layers(source, target)  # refuses turning Mamba back into attention
    if mamba and set(target.mixers) == {"attention"}:
        given = ", ".join(f"{k}={v}" for k, v in mamba.items())
        raise ValueError(
            f"the Mamba settings {given} apply to no layer: the layer pattern "
            f"{target.layer_pattern} is all attention; give --layer-pattern with M or S layers"
        )
    return target


def check_kept_mamba(
    source_cfg: ModelConfig, target: ModelConfig, source: str | Path, mamba: dict | None
) -> None:
    """Mamba settings that reshape the Mamba layers the source already has (e.g. d_state, or
    conv_bias=false) would write tensors the model cannot load, or silently drop trained ones:
    refused before any tensor is read. Needs the runtime (the layouts are built on meta)."""
    kept = [
        i
        for i, (before, after) in enumerate(zip(source_cfg.mixers, target.mixers, strict=True))
        if before == after != "attention"
    ]
    if not kept:
        return
    prefixes = tuple(f"decoder.layers.{i}.mixer." for i in kept)
    before, after = (
        {n: shape for n, (shape, _) in parameter_layout(c).items() if n.startswith(prefixes)}
        for c in (source_cfg, target)
    )
    wrong = sorted(set(before) ^ set(after))
    wrong += sorted(n for n in set(before) & set(after) if before[n] != after[n])
    if wrong:
        raise ValueError(
            f"the Mamba settings {mamba or {}} do not fit the Mamba layers {source} already has "
            f"(e.g. {wrong[:3]}); expected the settings it was made with"
        )


class _Reader:
    """Reads source tensors by name (aliases tried), remembering which were used."""

    def __init__(self, checkpoint: HFCheckpoint, aliases: dict[str, tuple[str, ...]]):
        self.checkpoint, self.aliases, self.used = checkpoint, aliases, set()
        self.available = checkpoint.names()

    def __call__(self, name: str) -> torch.Tensor:
        found = resolve(name, self.available, self.aliases)
        if found is None:
            raise MappingError(
                f"tensor {name!r} is missing from {self.checkpoint.root}; the configuration "
                "expects it"
            )
        self.used.add(found)
        return self.checkpoint.read(found)


def import_hf(
    source: str | Path,
    output: str | Path,
    layer_pattern: str | None = None,
    mamba: dict[str, Any] | None = None,
    parallel: ParallelConfig | None = None,
    seed: int = 0,
    overwrite: bool = False,
    progress: bool = True,
) -> ModelConfig:
    """Convert `source` into a native checkpoint directory `output`; returns its configuration.

    `parallel` only checks that the model splits at the TP/PP it will be trained with."""
    check_output(output, overwrite, [source])
    checkpoint = HFCheckpoint(source)
    source_cfg = source_model_config(source)
    target = target_config(source_cfg, layer_pattern, mamba)
    validate_parallel(target, parallel or ParallelConfig())
    init_runtime(ParallelSizes(1, 1), seed=seed)
    check_kept_mamba(source_cfg, target, source, mamba)
    token_ids = source_token_ids(source)
    with output_directory(output, overwrite, [source]) as temporary:
        _convert(checkpoint, source_cfg, target, temporary, seed, progress, token_ids)
        copy_tokenizer(Path(source), temporary)
    return target


def _convert(checkpoint, source_cfg, target, temporary: Path, seed, progress, token_ids) -> None:
    init_runtime(ParallelSizes(1, 1), seed=seed)
    table = table_for(target)
    entries = expand(table, source_cfg)
    read = _Reader(checkpoint, table.aliases)
    ctx = Context(source_cfg)
    layout = parameter_layout(target)
    tensors: dict[str, torch.Tensor] = {}
    swapped: set[int] = set()
    bar = tqdm(layout.items(), desc="import", unit="tensor", disable=not progress)
    for name, (shape, _) in bar:
        match = _MIXER.match(name)
        if match and source_cfg.mixers[int(match[1])] != target.mixers[int(match[1])]:
            swapped.add(int(match[1]))
            continue
        (_, tensor), *_ = to_native(entries, [name], read, ctx)
        tensors[name] = _checked(name, tensor, shape)
    for layer in sorted(swapped):
        tensors.update(_swapped_mixer(layer, target, entries, read, ctx, seed))
    if target.tie_embeddings:
        _check_tied_output(table, read)
    _refuse_unused(checkpoint, read, table.ignored)
    write_native(temporary, target, tensors, layout, token_ids)


def _checked(name: str, tensor: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    if tensor.shape != shape:
        raise MappingError(
            f"tensor {name!r} has shape {tuple(tensor.shape)} in the checkpoint; the "
            f"configuration expects {tuple(shape)}"
        )
    return tensor.to(torch.float32).contiguous()


def _swapped_mixer(layer, target, entries, read, ctx, seed) -> dict[str, torch.Tensor]:
    """A Mamba mixer for a layer that is attention in the source."""
    kind = target.mixers[layer]
    mixer = fresh_mixer(kind, target, layer, seed)
    prefix = f"decoder.layers.{layer}.mixer."
    attention_names = [n for n in entries if n.startswith(prefix)]
    if target.mamba.init == "attention":
        present = [n for n in attention_names if all(h in read.available for h in entries[n].hf)]
        attention = {n[len(prefix) :]: t.float() for n, t in to_native(entries, present, read, ctx)}
        mixer = mixer_from_attention(kind, attention, mixer, target, layer)
    else:  # the attention weights are dropped on purpose
        for n in attention_names:
            read.used.update(h for h in entries[n].hf if h in read.available)
    return {prefix + k: v for k, v in mixer.items()}


def _check_tied_output(table: Table, read: _Reader) -> None:
    """A tied model saved as pytorch_model.bin still holds its output layer: it is used when it
    is the embedding, refused when it differs (tying would drop its trained weights)."""
    hf = {rule.native: rule.hf[0] for rule in table.globals}
    output, embedding = hf["output_layer.weight"], hf["embedding.word_embeddings.weight"]
    found = resolve(output, read.available, read.aliases)
    if found is not None and not torch.equal(read(output), read(embedding)):
        raise MappingError(
            f"{read.checkpoint.root} has tie_word_embeddings=true but its {found} differs from "
            f"{embedding}; expected the same tensor, or tie_word_embeddings=false"
        )


def _refuse_unused(checkpoint: HFCheckpoint, read: _Reader, ignored: tuple[str, ...]) -> None:
    unused = sorted(
        n
        for n in read.available - read.used
        if not any(re.fullmatch(pattern, n) for pattern in ignored)
    )
    if unused:
        raise MappingError(
            f"{checkpoint.root} holds {len(unused)} tensor(s) its configuration does not "
            f"describe, e.g. {unused[:3]}; the config does not match the weights"
        )
