"""Map between a model's rank-local parameters and the full, single-process tensors.

megatron marks every tensor-parallel parameter with `tensor_model_parallel`, `partition_dim`
and `partition_stride`; pipeline stages number their layers locally from 0. With those two facts a
full state dict (global layer numbers, whole tensors) can be sliced for any rank, and rank-local
tensors can be named and placed back into the full layout.
"""

from __future__ import annotations

import re
from typing import NamedTuple

import torch
from megatron.core import parallel_state

_LAYER = re.compile(r"^(.*\blayers\.)(\d+)(\..*)$")


def layer_offsets(model: torch.nn.Module) -> dict[str, int]:
    """Prefix → global-minus-local layer index for every layer list in the model."""
    offsets: dict[str, int] = {}
    for name, module in model.named_modules():
        match = _LAYER.match(name + ".")
        # Only the layer itself (name ends in its index) carries the authoritative number.
        if match and match.group(3) == "." and hasattr(module, "layer_number"):
            local = int(match.group(2))
            offsets[match.group(1)] = module.layer_number - 1 - local
    return offsets


def global_name(local_name: str, offsets: dict[str, int]) -> str:
    """The single-process name of a parameter on this pipeline stage."""
    match = _LAYER.match(local_name)
    if not match or match.group(1) not in offsets:
        return local_name
    prefix, local, rest = match.groups()
    return f"{prefix}{int(local) + offsets[prefix]}{rest}"


class Partition(NamedTuple):
    """How a whole tensor is split over TP ranks: along `dim` (None: replicated); with `stride` > 1
    as megatron's strided split (rank r holds chunks r, r+W, ... of W·stride); with `segments`
    (whole sizes of consecutive blocks along `dim`, e.g. a fused [z, x, B, C, dt] projection) each
    block is split on its own and rank r holds its piece of every block, in order."""

    dim: int | None
    stride: int = 1
    segments: tuple[int, ...] | None = None


def partition_of(param: torch.Tensor) -> Partition:
    if getattr(param, "tensor_model_parallel", False):
        segments = getattr(param, "partition_segments", None)
        return Partition(
            param.partition_dim,
            getattr(param, "partition_stride", 1),
            tuple(segments) if segments is not None else None,
        )
    return Partition(None)


def mark_segments(param: torch.Tensor, segments: tuple[int, ...]) -> None:
    """Declare a column-parallel parameter as a fused stack of separately split blocks."""
    param.partition_segments = tuple(segments)


def tp_slice(full: torch.Tensor, part: Partition, rank: int, size: int) -> torch.Tensor:
    """TP rank `rank`'s piece of `full` (of `size` ranks)."""
    if part.dim is None:
        return full
    if part.segments:
        if sum(part.segments) != full.shape[part.dim] or any(s % size for s in part.segments):
            raise ValueError(
                f"segments {part.segments} of dimension {part.dim} (size "
                f"{full.shape[part.dim]}) do not split into {size} TP ranks"
            )
        blocks = full.split(list(part.segments), dim=part.dim)
        return torch.cat([b.chunk(size, dim=part.dim)[rank] for b in blocks], dim=part.dim)
    pieces = size * part.stride
    if full.shape[part.dim] % pieces:
        raise ValueError(
            f"dimension {part.dim} of size {full.shape[part.dim]} does not split into "
            f"{size} TP ranks × stride {part.stride}"
        )
    chunks = full.chunk(pieces, dim=part.dim)
    return torch.cat(chunks[rank::size], dim=part.dim)


def tp_merge(locals_by_rank: list[torch.Tensor], part: Partition) -> torch.Tensor:
    """The whole tensor from every TP rank's piece (ordered by rank); inverse of tp_slice."""
    if part.dim is None:
        return locals_by_rank[0]
    size = len(locals_by_rank)
    if part.segments:
        local_sizes = [s // size for s in part.segments]
        per_rank = [t.split(local_sizes, dim=part.dim) for t in locals_by_rank]
        ordered = [per_rank[r][b] for b in range(len(local_sizes)) for r in range(size)]
        return torch.cat(ordered, dim=part.dim)
    per_rank = [t.chunk(part.stride, dim=part.dim) for t in locals_by_rank]
    ordered = [per_rank[r][s] for s in range(part.stride) for r in range(size)]
    return torch.cat(ordered, dim=part.dim)


def is_tied_output(name: str, param: torch.Tensor) -> bool:
    return name.endswith("output_layer.weight") and getattr(param, "shared_embedding", False)


def _grad(param: torch.Tensor) -> torch.Tensor | None:
    """megatron DDP keeps gradients in `main_grad` buffers; plain modules in `.grad`."""
    return getattr(param, "main_grad", param.grad)


TIED_EMBEDDING = "embedding.word_embeddings.weight"
VOCAB_PARAMETERS = (TIED_EMBEDDING, "output_layer.weight")


def whole_shape(param: torch.Tensor, part: Partition, size: int) -> tuple[int, ...]:
    """The single-process shape of a rank-local parameter split over `size` TP ranks."""
    shape = list(param.shape)
    if part.dim is not None:
        shape[part.dim] = sum(part.segments) if part.segments else shape[part.dim] * size
    return tuple(shape)


def _fit_vocab(whole: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """Vocabulary rows padded for another TP size: the overlapping rows, zeros after them (as a
    distributed checkpoint loads them)."""
    fitted = whole.new_zeros(shape)
    rows = min(shape[0], whole.shape[0])
    fitted[:rows] = whole[:rows]
    return fitted


def _whole_for(
    key: str, full_state: dict, param: torch.Tensor, part: Partition, size: int, vocab: int | None
):
    """The whole tensor `key` in the shape `param` needs, or a one-sentence error naming it.
    `vocab`: the real (unpadded) vocabulary, which a vocabulary tensor must cover."""
    if key not in full_state:
        return None, f"parameter {key!r} is missing from the full state"
    whole, shape = full_state[key], whole_shape(param, part, size)
    if tuple(whole.shape) == shape:
        return whole, None
    if key in VOCAB_PARAMETERS and part.dim == 0 and tuple(whole.shape[1:]) == shape[1:]:
        if vocab is not None and whole.shape[0] < vocab:
            return None, (
                f"parameter {key!r} has {whole.shape[0]} rows in the full state; the "
                f"vocabulary has {vocab} tokens"
            )
        return _fit_vocab(whole, shape), None
    found = tuple(whole.shape)
    return None, f"parameter {key!r} has shape {found} in the full state; the model needs {shape}"


def _pipeline_union(used: set[str], error: str | None) -> tuple[set[str], str | None]:
    """Every pipeline stage's used keys and first error, so all stages refuse alike (and none
    waits on a stage that gave up) when only the union of stages covers the full state."""
    if parallel_state.get_pipeline_model_parallel_world_size() == 1:
        return used, error
    group = parallel_state.get_pipeline_model_parallel_group()
    stages = [None] * torch.distributed.get_world_size(group)
    torch.distributed.all_gather_object(stages, (used, error), group=group)
    errors = [e for _, e in stages if e is not None]
    return set().union(*(u for u, _ in stages)), errors[0] if errors else None


@torch.no_grad()
def load_full_state(model: torch.nn.Module, full_state: dict[str, torch.Tensor]) -> None:
    """Copy whole tensors (single-process names) into this rank's shards of `model`. The full
    state must be exactly the model's (over all pipeline stages): a missing, left-over or
    misshapen tensor means another model and is refused by name before anything is copied.
    Vocabulary rows may differ in padding, which megatron chooses by the TP size."""
    offsets = layer_offsets(model)
    rank = parallel_state.get_tensor_model_parallel_rank()
    size = parallel_state.get_tensor_model_parallel_world_size()
    vocab = getattr(model, "real_vocab_size", None)
    plan, used, error = [], set(), None
    for name, param in model.named_parameters():
        # The last stage's copy of a tied embedding is the embedding, whatever else the file has.
        key = TIED_EMBEDDING if is_tied_output(name, param) else global_name(name, offsets)
        part = partition_of(param)
        whole, problem = _whole_for(key, full_state, param, part, size, vocab)
        error = error or (problem and f"{problem} (local {name!r})")
        plan.append((param, whole, part))
        used.add(key)
    used, error = _pipeline_union(used, error)
    if error:
        raise ValueError(error)
    extra = sorted(set(full_state) - used)
    if extra:
        raise ValueError(
            f"the full state holds {len(extra)} tensor(s) the model does not have, "
            f"e.g. {extra[0]!r}"
        )
    for param, whole, part in plan:
        param.copy_(tp_slice(whole, part, rank, size))


def local_shards(
    model: torch.nn.Module, grads: bool = False
) -> dict[str, tuple[torch.Tensor, Partition]]:
    """Global name → (this rank's tensor or its gradient, its TP partition)."""
    offsets = layer_offsets(model)
    out = {}
    for name, param in model.named_parameters():
        if is_tied_output(name, param):
            continue  # a replica of the embedding on the last stage, not a parameter of its own
        tensor = _grad(param) if grads else param
        if tensor is None:
            continue
        out[global_name(name, offsets)] = (tensor.detach().clone(), partition_of(param))
    return out


def merge_shards(
    per_rank: list[dict[str, tuple[torch.Tensor, Partition]]], tp_ranks: list[int]
) -> dict[str, torch.Tensor]:
    """Reassemble whole tensors from every rank's `local_shards`, given each rank's TP rank."""
    pieces: dict[str, dict[int, tuple[torch.Tensor, Partition]]] = {}
    for shards, tp_rank in zip(per_rank, tp_ranks, strict=True):
        for name, value in shards.items():
            pieces.setdefault(name, {})[tp_rank] = value
    full = {}
    for name, by_rank in pieces.items():
        ordered = [by_rank[r] for r in sorted(by_rank)]
        full[name] = tp_merge([t for t, _ in ordered], Partition(*ordered[0][1]))
    return full
