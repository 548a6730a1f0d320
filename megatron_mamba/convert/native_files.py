"""Native checkpoints written and read as whole tensors, without building the model's weights.

A converter runs as one process: the model is built on the meta device only to learn each
parameter's name, shape and TP partition; tensors then go straight between the files and
megatron-core's distributed checkpoint, which any TP/PP layout loads. The checkpoint records its
model configuration, so a checkpoint alone is enough to export or to train from.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from megatron.core import dist_checkpointing

from megatron_mamba.config import ModelConfig, ParallelConfig
from megatron_mamba.config_io import dump, to_dict
from megatron_mamba.models.build import build_model
from megatron_mamba.parallel.sharded_state import sharded_tensor
from megatron_mamba.parallel.shards import Partition, is_tied_output, partition_of
from megatron_mamba.training.checkpoint import (
    CHECKPOINTS,
    LATEST,
    MODEL_CONFIG,
    find_checkpoint,
    in_process_results,
    step_dir,
)

MODEL_YAML = "model.yaml"
TOKEN_IDS = "hf_token_ids"
"""Common-state key of the bos/eos/pad ids of the transformers checkpoint a conversion came from
(ModelConfig does not hold them; an export writes them back)."""


def check_one_process(tool: str, note: str = "") -> None:
    """Converters run as one process: under torchrun every process would write the same output
    (and trip over the others' temporary directory). `note`: what the user may have meant."""
    world = os.environ.get("WORLD_SIZE", "1")
    if world.isdigit() and int(world) > 1:
        raise ValueError(
            f"WORLD_SIZE={world}: {tool} runs as one process and its output loads at any "
            f"TP/PP{note}; run it with python, not torchrun"
        )


def parameter_layout(model: ModelConfig) -> dict[str, tuple[torch.Size, Partition]]:
    """Name → (whole shape, TP partition) of every parameter of a single-process model; needs
    the runtime. Built on the meta device: nothing is allocated."""
    with torch.device("meta"):
        gpt = build_model(model, ParallelConfig(), cpu_initialization=True)
    return {
        name: (param.shape, partition_of(param))
        for name, param in gpt.named_parameters()
        if not is_tied_output(name, param)
    }


def write_native(
    root: Path,
    model: ModelConfig,
    tensors: dict[str, torch.Tensor],
    layout: dict,
    token_ids: dict | None = None,
) -> Path:
    """Save whole tensors as step 0 of a checkpoint directory under `root` (which must not exist
    yet; callers write to a temporary root and rename it); returns the step directory.
    `token_ids`: the source's bos/eos/pad ids, kept for exports."""
    state = {name: sharded_tensor(name, tensors[name], part) for name, (_, part) in layout.items()}
    target = step_dir(root / CHECKPOINTS, 0)
    target.mkdir(parents=True)
    in_process_results()
    common = {MODEL_CONFIG: to_dict(model), "progress": {"step": 0}}
    if token_ids is not None:
        common[TOKEN_IDS] = dict(token_ids)
    dist_checkpointing.save({"model": state, **common}, str(target))
    (root / CHECKPOINTS / LATEST).write_text(target.name + "\n")
    (root / MODEL_YAML).write_text(dump(model))
    return target


def read_token_ids(path: Path) -> dict | None:
    """The bos/eos/pad ids a converted checkpoint records (None for training checkpoints)."""
    common = dist_checkpointing.load_common_state_dict(str(find_checkpoint(path, path)))
    return common.get(TOKEN_IDS)


def read_native(path: Path, model: ModelConfig) -> dict[str, torch.Tensor]:
    """Every parameter as a whole tensor (fp32 unless saved otherwise); needs the runtime."""
    checkpoint = find_checkpoint(path, path)
    layout = parameter_layout(model)
    state = {
        name: sharded_tensor(name, torch.zeros(shape), part)
        for name, (shape, part) in layout.items()
    }
    loaded = dist_checkpointing.load({"model": state}, str(checkpoint))["model"]
    return dict(loaded)
