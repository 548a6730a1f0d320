"""Which checkpoint a run resumes from, decided once for every rank.

`resume_from_checkpoint` names a checkpoint, "latest", or "auto": the newest checkpoint of this
run where it has one, else a fresh start (megatron's --load of its save directory: one command
for every job of an exit_interval chain). A run would replace the checkpoints already under its
output_dir/run_name at its first save, and with them its metrics and config: it is refused
unless it resumes one of them or train.overwrite_output_dir says to replace them. Ranks listing
a shared filesystem may see it at different moments, so rank 0 decides and tells the others.
"""

from __future__ import annotations

from pathlib import Path

import torch

from megatron_mamba.training.bad_steps import TrainingError
from megatron_mamba.training.checkpoint import (
    CHECKPOINTS,
    LATEST,
    restore_set_aside,
    saved_checkpoints,
)


def resume_decision(cfg) -> str | None:
    """The checkpoint to resume (a path or "latest"), or None for a fresh start."""
    output = Path(cfg.output_dir) / cfg.run_name
    checkpoints = output / CHECKPOINTS
    restored = restore_set_aside(checkpoints)
    if restored is not None:
        print(f"{restored}: restored, its re-save had been interrupted", flush=True)
    saved = saved_checkpoints(checkpoints)
    steps = list(saved)
    resume = cfg.resume_from_checkpoint
    if resume == "auto":
        if not steps:
            return None
        # `latest` is written after the step directory: a crash between leaves it missing
        latest = (checkpoints / LATEST).is_file()
        resume = LATEST if latest else str(saved[steps[-1]])
    if not steps or cfg.overwrite_output_dir or (resume and _within(resume, output)):
        return resume
    shown = ", ".join(map(str, steps[:5])) + (", …" if len(steps) > 5 else "")
    held = f"{checkpoints} holds an earlier run's checkpoints (steps {shown})"
    if resume:
        raise TrainingError(
            f"{held}, which this run, resumed from {resume}, would replace: choose another "
            "train.run_name, or set train.overwrite_output_dir=true"
        )
    raise TrainingError(
        f"{held}, which this run would replace: resume it with "
        "train.resume_from_checkpoint=latest (or auto), choose another train.run_name, or set "
        "train.overwrite_output_dir=true"
    )


def _within(resume: str, output: Path) -> bool:
    """Whether `resume` is this run's own: "latest", or a path in its directory."""
    if resume == LATEST:
        return True
    path, run = Path(resume).resolve(), output.resolve()
    return path == run or run in path.parents


def agreed_resume(cfg) -> str | None:
    """resume_decision on rank 0, its answer (or its refusal) on every rank."""
    decision: list = [None]
    if torch.distributed.get_rank() == 0:
        try:
            decision[0] = (True, resume_decision(cfg))
        except TrainingError as error:
            decision[0] = (False, str(error))
    torch.distributed.broadcast_object_list(decision, src=0)
    decided, value = decision[0]
    if not decided:
        raise TrainingError(value)
    return value
