"""Which checkpoint a run resumes from, decided once for every rank.

`resume_from_checkpoint` names a checkpoint, "latest", or "auto": the newest checkpoint of this
run where it has one, else a fresh start (megatron's --load of its save directory: one command
for every job of an exit_interval chain). A run would replace the checkpoints already under its
output_dir/run_name at its first save, and with them its metrics and config: it is refused
unless it resumes one of them or train.overwrite_output_dir says to replace them. Ranks listing
a shared filesystem may see it at different moments, so rank 0 decides and tells the others.

A run resuming its own checkpoints must also be the same run: one that names the same run_name
but another model, data, starting point or teacher (a recipe's variant launched under a shared
name) would otherwise continue the earlier training under its own settings, or find it finished
and do nothing. Those settings are compared with the config.yaml the run wrote, and a difference
is refused unless train.resume_with_changes says to continue with the new ones. The losses'
weights may change (CALD's hybrid run turns the layer loss off and resumes); such changes are
printed.
"""

from __future__ import annotations

from pathlib import Path

import torch
import yaml

from megatron_mamba.config_io import to_dict
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


# The settings that make a run what it is; a resumed run must keep them (a section's name
# stands for all its keys). Lengths, schedules, logging and the layout may change on resume, and
# the losses' weights (NOTED) with a line saying so.
DEFINING = (
    "preset",
    "model",
    "train.init_from",
    "train.init_from_attention",
    "train.trainable",
    "data.kind",
    "data.path",
    "data.tokenizer",
    "data.pack",
    "data.train_on",
    "data.max_prompt_length",
    "distill.teacher",
    "dpo.reference",
)
NOTED = ("distill", "dpo")


def changed_settings(saved: dict, current: dict) -> tuple[list[str], list[str]]:
    """The settings whose values differ, as "key: saved → current": those DEFINING the run, and
    the NOTED ones (keys either config lacks, e.g. written by an older version, are not
    compared)."""
    before, now = _flat(saved), _flat(current)
    defining, noted = [], []
    for key in sorted(before.keys() & now.keys()):
        if _resolved(before[key]) == _resolved(now[key]):
            continue
        change = f"{key}: {_shown(before[key])} → {_shown(now[key])}"
        if _under(key, DEFINING):
            defining.append(change)
        elif _under(key, NOTED):
            noted.append(change)
    return defining, noted


def refuse_changed_run(run, resume: str) -> None:
    """Raise if `run` would resume its own checkpoints with other defining settings than the
    config.yaml they were trained with; print the losses' changed weights (module docstring)."""
    output = Path(run.train.output_dir) / run.train.run_name
    saved_config = output / "config.yaml"
    if not _within(resume, output) or not saved_config.is_file():
        return
    changed, noted = changed_settings(yaml.safe_load(saved_config.read_text()) or {}, to_dict(run))
    if changed and not run.train.resume_with_changes:
        raise TrainingError(
            f"{output} was trained with other settings than this run's ({'; '.join(changed)}), "
            "so resuming it would continue that training under these: choose another "
            "train.run_name, start it over (train.resume_from_checkpoint=null "
            "train.overwrite_output_dir=true), or continue it with these settings "
            "(train.resume_with_changes=true)"
        )
    if changed or noted:
        print(f"{output} resumes with changed settings: {'; '.join(changed + noted)}", flush=True)


def _flat(config: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(_flat(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def _resolved(value):
    """An existing path as its absolute form (a relaunch may spell it otherwise)."""
    if isinstance(value, str) and value and Path(value).exists():
        return str(Path(value).resolve())
    return value


def _under(key: str, sections) -> bool:
    return any(key == d or key.startswith(f"{d}.") for d in sections)


def _shown(value) -> str:
    return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()


def agreed_resume(run) -> str | None:
    """resume_decision on rank 0 (and, resuming its own run, refuse_changed_run), its answer
    (or its refusal) on every rank."""
    decision: list = [None]
    if torch.distributed.get_rank() == 0:
        try:
            resume = resume_decision(run.train)
            if resume:
                refuse_changed_run(run, resume)
            decision[0] = (True, resume)
        except TrainingError as error:
            decision[0] = (False, str(error))
    torch.distributed.broadcast_object_list(decision, src=0)
    decided, value = decision[0]
    if not decided:
        raise TrainingError(value)
    return value
