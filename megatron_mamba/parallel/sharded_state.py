"""A model's parameters as megatron-core sharded tensors, for distributed checkpoints.

Each parameter is described from the facts every rank already carries (its TP partition, and
its global layer number), so one function covers every module: attention, MLPs, norms and the
Mamba mixers. Keys are the single-process names, so a checkpoint saved at one TP/PP layout loads
at any other. A fused parameter whose blocks are split separately (`Partition.segments`, or
megatron's strided split) is stored as one tensor per block, each split evenly over TP ranks.
"""

from __future__ import annotations

import torch
from megatron.core import parallel_state as ps
from megatron.core.dist_checkpointing.mapping import ShardedTensor, ShardedTensorFactory

from megatron_mamba.parallel.shards import (
    TIED_EMBEDDING,
    VOCAB_PARAMETERS,
    Partition,
    global_name,
    is_tied_output,
    layer_offsets,
    partition_of,
)


def _tp() -> tuple[int, int]:
    return ps.get_tensor_model_parallel_rank(), ps.get_tensor_model_parallel_world_size()


def _block_sizes(local: torch.Tensor, part: Partition, tp_size: int) -> list[int] | None:
    """This rank's sizes of the separately split blocks along `part.dim`, or None if plain."""
    if part.segments:
        return [s // tp_size for s in part.segments]
    if part.stride > 1:
        return [local.shape[part.dim] // part.stride] * part.stride
    return None


def _blockwise(key: str, param: torch.Tensor, dim: int, sizes: list[int], replica_id):
    """A factory storing each block as `{key}.block{i}`; loading concatenates them back."""
    tp_rank, tp_size = _tp()

    def build(key, data, replica_id, flattened_range):
        if flattened_range is not None:
            raise NotImplementedError("blockwise parameters with a distributed optimizer")
        return {
            f"block{i}": ShardedTensor.from_rank_offsets(
                f"{key}.block{i}", block, (dim, tp_rank, tp_size), replica_id=replica_id
            )
            for i, block in enumerate(data.split(sizes, dim=dim))
        }

    def merge(loaded):
        return torch.cat([loaded[f"block{i}"] for i in range(len(sizes))], dim=dim)

    return ShardedTensorFactory(key, param, build, merge, replica_id)


def sharded_tensor(key: str, local: torch.Tensor, part: Partition, pipeline_copy: int = 0):
    """One parameter's ShardedTensor (or factory) under its single-process `key`.

    The replica that writes a tensor is TP rank 0 for replicated parameters and DP rank 0 for
    all. Vocabulary-sized tensors may differ in padding between layouts (megatron pads for the TP
    size): they load whatever rows overlap, the padding rows stay zero."""
    tp_rank, tp_size = _tp()
    dp_rank = ps.get_data_parallel_rank()
    if part.dim is None:
        return ShardedTensor.from_rank_offsets(
            key, local, replica_id=(pipeline_copy, tp_rank, dp_rank)
        )
    replica_id = (pipeline_copy, 0, dp_rank)
    sizes = _block_sizes(local, part, tp_size)
    if sizes is not None:
        return _blockwise(key, local, part.dim, sizes, replica_id)
    sharded = ShardedTensor.from_rank_offsets(
        key, local, (part.dim, tp_rank, tp_size), replica_id=replica_id
    )
    sharded.allow_shape_mismatch = key in VOCAB_PARAMETERS
    return sharded


def sharded_model_state(model: torch.nn.Module) -> dict:
    """Local parameter name → its ShardedTensor (or factory), keyed by single-process name; the
    last stage's copy of a tied embedding is loaded from the embedding, never written."""
    offsets = layer_offsets(model)
    state = {}
    for name, param in model.named_parameters():
        key, pipeline_copy = global_name(name, offsets), 0
        if is_tied_output(name, param):
            key, pipeline_copy = TIED_EMBEDDING, 1
        state[name] = sharded_tensor(key, param, partition_of(param), pipeline_copy)
    return state
