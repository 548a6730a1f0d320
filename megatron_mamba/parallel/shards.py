"""Map between a model's rank-local parameters and the full, single-process tensors.

megatron marks every tensor-parallel parameter with `tensor_model_parallel`, `partition_dim`
and `partition_stride`; pipeline stages number their layers locally from 0. With those two facts a
full state dict (global layer numbers, whole tensors) can be sliced for any rank, and rank-local
tensors can be named and placed back into the full layout.
"""

from __future__ import annotations

import re

import torch
from megatron.core import parallel_state

_LAYER = re.compile(r"^(.*\blayers\.)(\d+)(\..*)$")


def layer_offsets(model: torch.nn.Module) -> dict[str, int]:
    """Prefix → global-minus-local layer index for every layer list in the model."""
    offsets: dict[str, int] = {}
    for name, module in model.named_modules():
        match = _LAYER.match(name + ".")
        if match and hasattr(module, "layer_number"):
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


def partition_dim(param: torch.Tensor) -> int | None:
    """The dimension a parameter is split along across TP ranks, or None if replicated."""
    if getattr(param, "tensor_model_parallel", False):
        if getattr(param, "partition_stride", 1) != 1:
            raise NotImplementedError("strided tensor-parallel partitions are not supported")
        return param.partition_dim
    return None


def tp_slice(full: torch.Tensor, dim: int | None) -> torch.Tensor:
    """This TP rank's contiguous chunk of `full` along `dim` (the whole tensor if dim is None)."""
    if dim is None:
        return full
    size = parallel_state.get_tensor_model_parallel_world_size()
    rank = parallel_state.get_tensor_model_parallel_rank()
    if full.shape[dim] % size:
        raise ValueError(
            f"dimension {dim} of size {full.shape[dim]} does not split across {size} TP ranks"
        )
    return full.chunk(size, dim=dim)[rank]


@torch.no_grad()
def load_full_state(model: torch.nn.Module, full_state: dict[str, torch.Tensor]) -> None:
    """Copy whole tensors (single-process names) into this rank's shards of `model`."""
    offsets = layer_offsets(model)
    for name, param in model.named_parameters():
        key = global_name(name, offsets)
        if key not in full_state:
            raise KeyError(f"parameter {key!r} (local {name!r}) missing from the full state")
        param.copy_(tp_slice(full_state[key], partition_dim(param)))


def local_shards(
    model: torch.nn.Module, grads: bool = False
) -> dict[str, tuple[torch.Tensor, int | None]]:
    """Global name → (this rank's tensor or its gradient, its TP partition dim)."""
    offsets = layer_offsets(model)
    out = {}
    for name, param in model.named_parameters():
        tensor = param.grad if grads else param
        if tensor is None:
            continue
        out[global_name(name, offsets)] = (tensor.detach().clone(), partition_dim(param))
    return out


def merge_shards(
    per_rank: list[dict[str, tuple[torch.Tensor, int | None]]], tp_ranks: list[int]
) -> dict[str, torch.Tensor]:
    """Reassemble whole tensors from every rank's `local_shards` (ordered by TP rank)."""
    pieces: dict[str, dict[int, tuple[torch.Tensor, int | None]]] = {}
    for shards, tp_rank in zip(per_rank, tp_ranks, strict=True):
        for name, value in shards.items():
            pieces.setdefault(name, {})[tp_rank] = value
    full = {}
    for name, by_rank in pieces.items():
        ordered = [by_rank[r] for r in sorted(by_rank)]
        dim = ordered[0][1]
        full[name] = ordered[0][0] if dim is None else torch.cat([t for t, _ in ordered], dim)
    return full
