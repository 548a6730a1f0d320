"""Training checkpoints in megatron-core's distributed format, written atomically.

Layout under a run's directory:

    checkpoints/step_00000100/   a megatron-core distributed checkpoint (any TP/PP can load it)
    checkpoints/latest           the name of the newest complete checkpoint

A save writes `step_N.partial/`, then rank 0 renames it to `step_N/` and replaces `latest` (both
atomic renames), and only then prunes: checkpoints of steps after N go (see `_prune`), and of the
rest the newest `keep` stay, `step_N` among them. A checkpoint is deleted only after being
renamed to a `.partial` name (a `step_N` saved again after a resume too, and only once the new
one is in place). A crash at any point leaves the previous checkpoint whole and `latest` naming
it, and no half-deleted checkpoint under a step's name; a stale `.partial` is removed by the
next save.
Besides the weights a checkpoint holds the optimizer (moments, fp32 master weights, loss scale),
the LR scheduler, every rank's RNG states and the training progress, so that a resumed run
continues exactly where it stopped. A run may also resume at another TP/PP/DP layout: megatron's
replicated optimizer describes its state per parameter, as the weights, so both reshard; only
the RNG states, one per rank, do not carry over (the generators keep the run's seed). The
distributed optimizer's state, kept as it lies in its buffers, resumes at its own layout only.
"""

from __future__ import annotations

import os
import queue
import random
import re
import shutil
from pathlib import Path

import numpy as np
import torch
from megatron.core import dist_checkpointing
from megatron.core import parallel_state as ps
from megatron.core.dist_checkpointing.dict_utils import nested_items_iter, nested_values
from megatron.core.dist_checkpointing.mapping import (
    ShardedObject,
    ShardedTensor,
    ShardedTensorFactory,
)
from megatron.core.dist_checkpointing.strategies import filesystem_async
from megatron.core.tensor_parallel.random import get_cuda_rng_tracker

from megatron_mamba.config import ModelConfig
from megatron_mamba.config_io import build, to_dict
from megatron_mamba.parallel.sharded_state import sharded_model_state
from megatron_mamba.training.distributed_optimizer_state import (
    after_loading,
    before_describing_the_load,
    shards_its_state,
)

CHECKPOINTS = "checkpoints"
MODEL_CONFIG = "model_config"
LATEST = "latest"
_PARTIAL = ".partial"


class CheckpointError(RuntimeError):
    """A checkpoint cannot be found or does not fit the run."""


# megatron's distributed optimizer saves its shards as they lie in its buffers (it resumes at the
# layout it was saved with); megatron-core 0.16.1's default for it,
# 'fully_sharded_model_space', fails at save ("ShardedTensor.flattened_range is not supported").
# The replicated optimizer ignores this.
_OPTIMIZER_FORMAT = {"distrib_optim_sharding_type": "dp_reshardable"}


def step_dir(root: Path, step: int) -> Path:
    return root / f"step_{step:08d}"


def _layout() -> dict[str, int]:
    return {
        "tensor": ps.get_tensor_model_parallel_world_size(),
        "pipeline": ps.get_pipeline_model_parallel_world_size(),
        "data": ps.get_data_parallel_world_size(),
    }


def _rng_state() -> ShardedObject:
    """This rank's generators, one object per (pipeline, tensor, data) rank."""
    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state() if torch.cuda.is_available() else None,
        "tracker": get_cuda_rng_tracker().get_states(),
    }
    layout = _layout()
    return ShardedObject(
        "rng_state",
        state,
        (layout["pipeline"], layout["tensor"], layout["data"]),
        (
            ps.get_pipeline_model_parallel_rank(),
            ps.get_tensor_model_parallel_rank(),
            ps.get_data_parallel_rank(),
        ),
        replica_id=0,
    )


def _set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if state["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])
    get_cuda_rng_tracker().set_states(state["tracker"])


def _write_atomically(path: Path, text: str) -> None:
    temporary = path.with_name(path.name + _PARTIAL)
    with open(temporary, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(temporary, path)


def _step_of(path: Path) -> int | None:
    """The step of a complete checkpoint directory `step_N`; None for anything else."""
    number = path.name.removeprefix("step_")
    return int(number) if path.is_dir() and number.isdigit() else None


def saved_checkpoints(root: Path) -> dict[int, Path]:
    """The complete checkpoints in `root` by step, in step order (none where it does not
    exist)."""
    if not root.is_dir():
        return {}
    found = {step: path for path in root.iterdir() if (step := _step_of(path)) is not None}
    return dict(sorted(found.items()))


def restore_set_aside(root: Path) -> Path | None:
    """Undo a save of a step that already had a checkpoint, interrupted after the old one was
    set aside and before the new one took its name: `latest` then names a missing directory
    while the old checkpoint, complete, waits under its set-aside name. Put it back (the run
    resumed from it saves that step again); returns the restored path, if any. Run by one
    process (rank 0) before a resume is decided."""
    latest = root / LATEST
    if not latest.is_file():
        return None
    final = root / latest.read_text().strip()
    aside = _aside_name(final)
    if final.exists() or not aside.is_dir():
        return None
    os.replace(aside, final)
    return final


def _aside_name(path: Path) -> Path:
    return path.with_name(f"{path.name}.old{_PARTIAL}")


def _set_aside(path: Path) -> Path:
    """Rename a checkpoint to a `.partial` name (atomic) before deleting it: a crash while
    deleting would otherwise leave a half checkpoint that still looks complete (its
    metadata.json may outlast its tensors). The next save removes what is left."""
    aside = _aside_name(path)
    if aside.exists():
        shutil.rmtree(aside)
    os.replace(path, aside)
    return aside


def _prune(root: Path, saved: int, keep: int, protected: tuple[int, ...] = ()) -> None:
    """After saving step `saved` (which `latest` now names): remove every checkpoint of a later
    step, then all but the newest `keep` (≥ 1) of the rest, by step number, and the
    `protected` steps.

    Checkpoints after `saved` are an abandoned future: left by an earlier run in the same
    directory, or by this run before it was resumed from an older checkpoint. The run that has
    just saved step `saved` is the one going on, so its checkpoint is the newest; kept, the
    later ones would count as newer, and pruning would delete `saved` itself. So a run resumed
    from an older checkpoint replaces the steps after it at its first save (until then `latest`
    still names the abandoned run's newest)."""
    steps = saved_checkpoints(root)
    kept = [step for step in steps if step <= saved][-keep:]
    kept += [step for step in protected if step <= saved]
    for step, path in steps.items():
        if step not in kept:
            shutil.rmtree(_set_aside(path))


def in_process_results() -> None:
    """Saves here are synchronous: the writer's results come back in this process. megatron's
    writer would otherwise start a Manager server process (spawn) just to carry them, which
    re-imports the main script and outlives a crashed run holding its output pipes."""
    if getattr(filesystem_async, "_results_queue", None) is None:
        filesystem_async._results_queue = queue.Queue()


def save_checkpoint(
    root: Path,
    step: int,
    model,
    optimizer,
    scheduler,
    progress: dict,
    keep: int,
    model_config: ModelConfig,
    protected: tuple[int, ...] = (),
) -> Path:
    """Save everything needed to resume after `step` (and the model configuration, so the
    checkpoint alone can be exported or trained from); collective over all ranks. Of the
    earlier checkpoints the newest `keep` stay, and those of the `protected` steps."""
    final = step_dir(root, step)
    partial = final.with_name(final.name + _PARTIAL)
    if torch.distributed.get_rank() == 0:
        for stale in root.glob(f"step_*{_PARTIAL}"):
            shutil.rmtree(stale)
        partial.mkdir(parents=True)
    torch.distributed.barrier()
    model_state = sharded_model_state(model)
    state = {
        "model": model_state,
        "optimizer": optimizer.sharded_state_dict(model_state, metadata=_OPTIMIZER_FORMAT),
        "rng_state": _rng_state(),
        "scheduler": scheduler.state_dict(),
        "progress": {**progress, "step": step, "layout": _layout()},
        MODEL_CONFIG: to_dict(model_config),
    }
    in_process_results()
    dist_checkpointing.save(state, str(partial))
    torch.distributed.barrier()
    if torch.distributed.get_rank() == 0:
        # The same step saved again after a resume: set aside, deleted once the new one is in.
        replaced = _set_aside(final) if final.exists() else None
        os.replace(partial, final)
        _write_atomically(root / LATEST, final.name + "\n")
        if replaced is not None:
            shutil.rmtree(replaced)
        _prune(root, step, keep, protected)
    torch.distributed.barrier()
    return final


def find_checkpoint(spec: str | Path, root: Path) -> Path:
    """A checkpoint directory from `spec`: "latest" (the newest in `root`), a checkpoint, or a
    directory holding checkpoints (or a run directory) whose newest is taken."""
    path = root if str(spec) == LATEST else Path(spec)
    for holder in (path, path / CHECKPOINTS):
        if (holder / LATEST).is_file():
            path = holder / (holder / LATEST).read_text().strip()
            break
    else:
        if str(spec) == LATEST:
            raise CheckpointError(f"no checkpoint to resume: {root / LATEST} does not exist")
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist")
    if not (path / "metadata.json").is_file():
        if (path / "config.json").is_file():
            raise CheckpointError(
                f"{path} is a transformers directory, not a native checkpoint: import it first "
                "(tools/convert_hf_to_native.py)"
            )
        raise CheckpointError(
            f"{path} is not a complete checkpoint (expected a megatron-core distributed "
            "checkpoint directory with metadata.json)"
        )
    return path


def read_model_config(path: Path) -> ModelConfig:
    """The model configuration a checkpoint was saved with (`path` as for find_checkpoint)."""
    checkpoint = find_checkpoint(path, path)
    common = dist_checkpointing.load_common_state_dict(str(checkpoint))
    if MODEL_CONFIG not in common:
        raise CheckpointError(f"{checkpoint} does not record its model configuration")
    return build(ModelConfig, common[MODEL_CONFIG], "model")


def _refuse_unfitting_tensors(path: Path, request: dict) -> None:
    """A checkpoint tensor no rank's model asks for would be dropped without a word (e.g. Mamba
    projection biases the run's config lacks), and one of another shape (e.g. another d_state)
    would fail deep in the loader: refuse either, naming them, on every rank alike."""
    metadata = dist_checkpointing.load_tensors_metadata(str(path))
    wanted: set[str] = {sharded.key for sharded in request.values()}
    by_parameter = {}  # a fused parameter: its first unfitting block
    for sharded in request.values():
        for tensor in _built(sharded):
            stored = metadata.get(tensor.key)
            # vocabulary rows are padded by the TP size and may differ
            if stored is None or tensor.allow_shape_mismatch:
                continue
            if tuple(stored.global_shape) != tuple(tensor.global_shape):
                by_parameter.setdefault(
                    sharded.key,
                    f"{sharded.key} {tuple(stored.global_shape)} in it, "
                    f"{tuple(tensor.global_shape)} in this model",
                )
    misshapen = list(by_parameter.values())
    every_rank: list = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(every_rank, (wanted, misshapen))
    wanted = set().union(*(w for w, _ in every_rank))
    misshapen = sorted(set().union(*(m for _, m in every_rank)))
    saved = {_BLOCK.sub("", key) for key in metadata if not key.startswith("optimizer.")}
    unused = sorted(saved - wanted)
    differs = (
        "the run's model configuration differs from the checkpoint's (`--dry-run` prints the run's)"
    )
    if unused:
        raise CheckpointError(
            f"{path} holds weights this model has no place for: {_some(unused)}; {differs}"
        )
    if misshapen:
        raise CheckpointError(
            f"{path} holds weights of other shapes than this model's: {_some(misshapen)}; {differs}"
        )


def _built(sharded) -> list[ShardedTensor]:
    """The ShardedTensors a request entry stands for (a factory's blocks built)."""
    if isinstance(sharded, ShardedTensorFactory):
        return [t for t in nested_values(sharded.build()) if isinstance(t, ShardedTensor)]
    return [sharded] if isinstance(sharded, ShardedTensor) else []


def _some(names: list[str]) -> str:
    return ", ".join(names[:4]) + (f" and {len(names) - 4} more" if len(names) > 4 else "")


_BLOCK = re.compile(r"\.block\d+$")  # a block of a separately split fused parameter


def load_weights(path: Path, model) -> dict:
    """Load only the weights (at any TP/PP layout); returns the checkpoint's progress record.
    Every weight of the checkpoint must find its place in the model."""
    request = sharded_model_state(model)
    _refuse_unfitting_tensors(path, request)
    loaded = dist_checkpointing.load({"model": request}, str(path))
    _copy_into(model, loaded["model"])
    return dist_checkpointing.load_common_state_dict(str(path))["progress"]


# The LR scheduler's state, by the setting each value comes from (its weight-decay steps and
# style follow from these).
_SCHEDULE = {
    "max_lr": "train.learning_rate",
    "min_lr": "train.min_lr",
    "lr_decay_style": "train.lr_scheduler_type",
    "lr_warmup_steps": "warmup steps (train.warmup_steps, or train.warmup_ratio of the schedule)",
    "lr_decay_steps": "decay steps (train.lr_decay_steps, or the run's total steps when unset)",
    "start_wd": "train.weight_decay",
}


def _check_schedule(path: Path, saved: dict, scheduler) -> None:
    """A resume continues the checkpoint's schedule: megatron's scheduler takes the values it
    was saved with over the run's, so a changed setting would be silently ignored (and
    misreported in config.yaml). Refuse the resume instead, naming the setting; a constant
    schedule holds no decay, so its length and floor may change."""
    current = scheduler.state_dict()
    constant = saved["lr_decay_style"] == current["lr_decay_style"] == "constant"
    unused = {"lr_decay_steps", "min_lr"} if constant else set()
    for key, setting in _SCHEDULE.items():
        if key not in unused and saved[key] != current[key]:
            raise CheckpointError(
                f"{path} was trained with {setting} = {saved[key]}; this run has "
                f"{current[key]}. A resume continues the checkpoint's LR schedule: set it as the "
                "checkpoint had it, or start a new schedule from its weights with "
                "train.init_from"
            )


def _adam_settings(optimizer) -> dict:
    group = optimizer.param_groups[0]
    return {"train.adam_beta1, adam_beta2": tuple(group["betas"]), "train.adam_eps": group["eps"]}


def _check_adam(path: Path, before: dict, optimizer) -> None:
    """Loading an optimizer state also loads its betas and eps over the run's (torch's
    `load_state_dict`); refuse a resume that set them otherwise rather than ignore it."""
    for setting, saved in _adam_settings(optimizer).items():
        if saved != before[setting]:
            raise CheckpointError(
                f"{path} was trained with {setting} = {saved}; this run has {before[setting]}. "
                "A resume continues the checkpoint's optimizer: set them as it had them, or "
                "start a new optimizer from its weights with train.init_from"
            )


def saved_progress(path: Path) -> dict:
    """The progress record a checkpoint was saved with (step, data order, numerics), read
    without loading its tensors."""
    return dist_checkpointing.load_common_state_dict(str(path))["progress"]


def load_checkpoint(path: Path, model, optimizer, scheduler) -> dict:
    """Restore weights, optimizer, scheduler and RNG to resume; returns the progress.

    Resuming needs the checkpoint's LR schedule (`scheduler` built from the same settings) and
    its Adam settings. At another layout the RNG states stay as the run seeded them (see
    `_check_layout`)."""
    common = dist_checkpointing.load_common_state_dict(str(path))
    same_layout = _check_layout(path, common, optimizer)
    _check_schedule(path, common["scheduler"], scheduler)
    before_describing_the_load(optimizer)
    model_state = sharded_model_state(model)
    request = {
        "model": model_state,
        "optimizer": optimizer.sharded_state_dict(
            model_state, is_loading=True, metadata=_OPTIMIZER_FORMAT
        ),
    }
    if same_layout:
        request["rng_state"] = _rng_state()
    loaded = dist_checkpointing.load(request, str(path))
    _copy_into(model, loaded["model"])
    adam = _adam_settings(optimizer)
    optimizer.load_state_dict(loaded["optimizer"])
    _check_adam(path, adam, optimizer)
    after_loading(optimizer, loaded["optimizer"])
    scheduler.load_state_dict(common["scheduler"])
    if same_layout:
        _set_rng_state(loaded["rng_state"])
    return common["progress"]


def _check_layout(path: Path, common: dict, optimizer) -> bool:
    """Whether the checkpoint was saved at this run's layout. At another layout it resumes but
    for the RNG states (one per rank; they matter only where something draws, e.g. dropout), and
    says so; the distributed optimizer's state cannot move, nor change to or from the
    replicated optimizer's."""
    saved, current = common["progress"]["layout"], _layout()
    saved_sharded, sharded = _holds_buffer_shards(common["optimizer"]), shards_its_state(optimizer)
    if saved_sharded != sharded:
        raise CheckpointError(
            f"{path} was saved with train.use_distributed_optimizer={saved_sharded}; this run "
            f"has {sharded}, and a resume continues the checkpoint's optimizer state (load its "
            "weights with train.init_from to change it)"
        )
    if saved == current:
        return True
    if sharded:
        raise CheckpointError(
            f"{path} was saved with layout {saved}; this run has {current}, and the distributed "
            "optimizer's state (train.use_distributed_optimizer) resumes only at the layout it "
            "was saved with: resume at that layout, or load the weights with train.init_from"
        )
    if torch.distributed.get_rank() == 0:
        print(
            f"resuming {path}, saved with layout {saved}, at layout {current}: weights, "
            "optimizer, schedule and data position carry over; the random generators keep this "
            "run's seed",
            flush=True,
        )
    return False


def _holds_buffer_shards(optimizer_state: dict) -> bool:
    """Whether a saved optimizer state (of one optimizer or a chain) is the distributed
    optimizer's, which records how it sharded its buffers."""
    keys = (key for _, key, _ in nested_items_iter(optimizer_state))
    return "param_state_sharding_type" in keys


@torch.no_grad()
def _copy_into(model, tensors: dict[str, torch.Tensor]) -> None:
    for name, param in model.named_parameters():
        param.copy_(tensors[name])
