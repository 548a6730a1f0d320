"""CALD's lm-eval suite over several checkpoints, and the one comparison table it reports.

CALD (lm/eval) reports 0-shot accuracy on eight tasks and their mean; any other lm-eval task, or a
local task YAML found through `include_path`, goes into the same table under its headline metric.
"""

from __future__ import annotations

import functools
import gc
import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch

CALD_TASKS = (
    "lambada_openai",
    "piqa",
    "winogrande",
    "wsc273",
    "arc_easy",
    "arc_challenge",
    "sciq",
    "logiqa",
)
# The metric a task shows in the table: accuracy where it has one (CALD's choice), else these.
_HEADLINE = ("acc", "exact_match", "word_perplexity", "perplexity", "bits_per_byte")
MEAN = "mean acc"


@dataclass
class Checkpoint:
    name: str
    path: str


def task_manager(include_path: str | None, tasks: tuple[str, ...] = ()):
    """lm-eval's task index for `tasks`: the local task files under include_path alone where
    they hold every one of them (none a group or tag), else with lm-eval's own, whose thousands
    of files take half a minute to index on two cores. Each index is built once per process."""
    if include_path and tasks:
        local = _index(include_path, include_defaults=False)
        if set(tasks) <= set(local.all_subtasks):
            return local
    return _index(include_path, include_defaults=True)


@functools.cache
def _index(include_path: str | None, include_defaults: bool):
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=include_path, include_defaults=include_defaults)


def check_tasks(tasks: list[str], manager) -> None:
    """Refuse unknown task names before any model is loaded."""
    unknown = [task for task in tasks if task not in manager.all_tasks]
    if unknown:
        raise ValueError(
            f"unknown lm-eval task(s) {', '.join(unknown)}; a local task needs its YAML's "
            "directory as --include_path"
        )


def load_task_data(tasks: list[str], manager) -> None:
    """Build the tasks, loading their datasets, before any model is loaded: a dataset that is
    neither local nor cached, with no network, then fails here in one line rather than in a
    long traceback once the first model is loaded."""
    from lm_eval.tasks import get_task_dict

    try:
        get_task_dict(tasks, manager)
    except Exception as error:  # datasets' and the hub's errors share no base class
        reason = (str(error).strip() or type(error).__name__).splitlines()[0]
        raise ValueError(
            f"the data of lm-eval task(s) {', '.join(tasks)} could not be loaded "
            f"({type(error).__name__}: {reason}); with no network a task's dataset must be local "
            "or already in the Hugging Face datasets cache"
        ) from None


def headline(metrics: dict) -> tuple[str, float] | None:
    """(metric, value) shown for one task's lm-eval results, filter suffix removed."""
    values = {
        key.split(",")[0]: value
        for key, value in metrics.items()
        if isinstance(value, int | float) and "_stderr" not in key and key != "sample_len"
    }
    for name in _HEADLINE:
        if name in values:
            return name, float(values[name])
    return None


def comparison_table(results: dict[str, dict[str, dict]], tasks: list[str]) -> dict:
    """{checkpoint: {task: value, ..., "mean acc": value}} plus each column's metric."""
    rows, metrics = {}, {}
    for name, by_task in results.items():
        row, accuracies = {}, []
        for task in tasks:
            shown = headline(by_task.get(task, {}))
            if shown is None:
                continue
            metrics[task], row[task] = shown
            if shown[0] == "acc":
                accuracies.append(shown[1])
        if accuracies:
            row[MEAN] = sum(accuracies) / len(accuracies)
        rows[name] = row
    return {"metrics": metrics, "rows": rows}


def to_markdown(table: dict) -> str:
    metrics = table["metrics"]
    columns = list(metrics)
    header = ["checkpoint"] + [f"{task} ({metric})" for task, metric in metrics.items()]
    if any(MEAN in row for row in table["rows"].values()):
        columns.append(MEAN)
        header.append(MEAN)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, row in table["rows"].items():
        cells = [_cell(row.get(column), metrics.get(column, "acc")) for column in columns]
        lines.append("| " + " | ".join([name, *cells]) + " |")
    return "\n".join(lines) + "\n"


# Fractions between 0 and 1, shown to four decimals; other metrics (perplexities) have four
# significant digits, so an untrained model's 6.817e+17 stays readable.
_FRACTIONS = ("acc", "exact_match")


def _cell(value: float | None, metric: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:.4f}" if metric in _FRACTIONS else f"{value:.4g}"


def evaluate(
    checkpoint: Checkpoint, tasks: list[str], manager, model_args: dict, **options
) -> dict[str, dict]:
    """lm-eval results by task for one checkpoint (native or HF export), the model freed after."""
    import lm_eval

    from megatron_mamba.evaluation.lm_eval_model import MegatronMambaLM

    model = MegatronMambaLM(pretrained=checkpoint.path, **model_args)
    try:
        out = lm_eval.simple_evaluate(model=model, tasks=tasks, task_manager=manager, **options)
    finally:
        del model
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    return out["results"]


def write_outputs(directory: Path, results: dict, table: dict) -> None:
    """results.json (every metric), table.json and table.md; each file written whole."""
    directory.mkdir(parents=True, exist_ok=True)
    for name, text in (
        ("results.json", json.dumps(results, indent=2, default=str) + "\n"),
        ("table.json", json.dumps(table, indent=2) + "\n"),
        ("table.md", to_markdown(table)),
    ):
        partial = directory / f".{name}.partial"
        partial.write_text(text)
        partial.replace(directory / name)
