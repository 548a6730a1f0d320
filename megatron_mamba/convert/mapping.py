"""The one mapping engine between transformers' names and the native (megatron) names.

An architecture is described by a `Table` of `Rule`s: a native name template, the transformers
name template(s) it corresponds to, and a named `Transform` that turns the transformers tensors
into the native one and back. Templates use `{i}` for the layer index; mixer rules apply only to
layers whose mixer (from the layer pattern) they describe. The engine expands a table for one
model and answers in both directions, one tensor at a time, so a converter can stream.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch

from megatron_mamba.config import ModelConfig


@dataclass(frozen=True)
class Context:
    """What a transform may need: the model, and the TP size its vocabulary is padded for."""

    model: ModelConfig
    tensor_parallel: int = 1

    @property
    def padded_vocab(self) -> int:
        return self.model.padded_vocab_size(self.tensor_parallel)


@dataclass(frozen=True)
class Transform:
    """A pair of inverse functions: transformers tensors → native tensor, and back."""

    name: str
    to_native: Callable[[list[torch.Tensor], Context], torch.Tensor]
    to_hf: Callable[[torch.Tensor, Context], list[torch.Tensor]]


COPY = Transform("copy", lambda ts, ctx: ts[0], lambda t, ctx: [t])


@dataclass(frozen=True)
class Rule:
    native: str
    hf: tuple[str, ...]
    transform: Transform = COPY

    def __init__(self, native: str, hf: str | tuple[str, ...], transform: Transform = COPY):
        object.__setattr__(self, "native", native)
        object.__setattr__(self, "hf", (hf,) if isinstance(hf, str) else tuple(hf))
        object.__setattr__(self, "transform", transform)


@dataclass(frozen=True)
class Table:
    """One architecture family. `mixer_rules(kind, model)` gives the rules of one layer's mixer
    (kind: attention, mamba1, mamba2), whose layout may depend on the model's Mamba settings.
    `aliases` are other names a checkpoint may use for a tensor; `ignored` are patterns of
    transformers names that hold no weights (buffers of old checkpoints)."""

    family: str
    globals: tuple[Rule, ...]
    block: tuple[Rule, ...]
    mixer_rules: Callable[[str, ModelConfig], tuple[Rule, ...]]
    aliases: dict[str, tuple[str, ...]] = field(default_factory=dict)
    ignored: tuple[str, ...] = field(default_factory=tuple)


class MappingError(ValueError):
    """Weights that do not fit the configuration (missing, unexpected or misshapen tensors)."""


@dataclass(frozen=True)
class Entry:
    """One native tensor and the transformers tensors it is made of."""

    native: str
    hf: tuple[str, ...]
    transform: Transform
    layer: int | None


def expand(table: Table, model: ModelConfig) -> dict[str, Entry]:
    """Native name → Entry, for every tensor a model of this configuration may have (optional
    tensors such as biases included; callers keep the ones the model really has)."""
    entries: dict[str, Entry] = {}

    def add(rule: Rule, layer: int | None) -> None:
        fmt = {} if layer is None else {"i": layer}
        native = rule.native.format(**fmt)
        entries[native] = Entry(
            native, tuple(h.format(**fmt) for h in rule.hf), rule.transform, layer
        )

    for rule in table.globals:
        add(rule, None)
    for layer, kind in enumerate(model.mixers):
        for rule in (*table.block, *table.mixer_rules(kind, model)):
            add(rule, layer)
    if model.tie_embeddings:
        entries.pop("output_layer.weight", None)
    return entries


def resolve(name: str, available, aliases: dict[str, tuple[str, ...]]) -> str | None:
    """The name under which `available` holds `name` (itself or one of its aliases), if any."""
    for candidate in (name, *aliases.get(name, ())):
        if candidate in available:
            return candidate
    return None


def to_native(
    entries: dict[str, Entry],
    names: list[str],
    read: Callable[[str], torch.Tensor],
    ctx: Context,
) -> Iterator[tuple[str, torch.Tensor]]:
    """The native tensors `names`, each built from the transformers tensors `read` returns."""
    for name in names:
        entry = entries.get(name)
        if entry is None:
            raise MappingError(f"no conversion rule produces native tensor {name!r}")
        tensors = [read(h) for h in entry.hf]
        try:
            native = entry.transform.to_native(tensors, ctx)
        except (RuntimeError, ValueError) as error:  # shapes that do not fit the configuration
            found = ", ".join(
                f"{h} {tuple(t.shape)}" for h, t in zip(entry.hf, tensors, strict=True)
            )
            raise MappingError(
                f"native tensor {name!r} cannot be made from {found}: {error}"
            ) from error
        yield name, native


def to_hf(
    entries: dict[str, Entry], native: Iterator[tuple[str, torch.Tensor]], ctx: Context
) -> Iterator[tuple[str, torch.Tensor]]:
    """transformers tensors from native ones, in the order the native ones come."""
    for name, tensor in native:
        entry = entries.get(name)
        if entry is None:
            raise MappingError(f"native tensor {name!r} has no transformers name")
        pieces = entry.transform.to_hf(tensor, ctx)
        yield from zip(entry.hf, pieces, strict=True)
