"""Training metrics on rank 0: a console progress line, a jsonl file, and wandb.

Each `log(step, values)` call writes one record {"step", "time", ...values} to every sink. wandb
runs offline unless WANDB_MODE says otherwise, so a run never needs the network. JSON has no NaN
or infinity (strict readers such as jq or JavaScript refuse Python's bare `NaN`), so the jsonl
file writes a non-finite value as null, and `read_metrics` reads a null back as NaN.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path
from typing import TextIO


def format_eta(seconds: float) -> str:
    if not math.isfinite(seconds) or seconds < 0:
        return "?"
    hours, rest = divmod(int(seconds), 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}"


def progress_line(step: int, total: int, values: dict[str, float], eta_seconds: float) -> str:
    """`step 12/100 | loss 2.3104 | ce 2.2000 | lr 3.00e-04 | grad_norm 0.91 | tokens/s 51,234 |
    mfu 41.2% | eta 0:03:10` — losses first, then whatever else was logged."""
    parts = [f"step {step}/{total}"]
    for key, value in values.items():
        if key == "lr":
            parts.append(f"lr {value:.2e}")
        elif key == "tokens_per_s":
            parts.append(f"tokens/s {value:,.0f}")
        elif key == "mfu":
            parts.append(f"mfu {value:.1%}")
        elif key == "skipped":  # shown only where the update was not applied
            if value:
                parts.append("skipped")
        elif isinstance(value, float):
            parts.append(f"{key} {value:.4f}")
        else:
            parts.append(f"{key} {value}")
    parts.append(f"eta {format_eta(eta_seconds)}")
    return " | ".join(parts)


class MetricsLogger:
    def __init__(
        self,
        output_dir: str | Path,
        sinks: tuple[str, ...],
        total_steps: int,
        is_main: bool = True,
        run_name: str = "run",
        config: dict | None = None,
        stream: TextIO = sys.stdout,
        append: bool = False,
    ):
        """`append` (a resumed run) adds to the directory's metrics.jsonl; otherwise a fresh
        file replaces it, so that a new run in an old directory does not mix its records with
        the old run's (read_metrics would take them as one run)."""
        self.is_main, self.total_steps, self.stream = is_main, total_steps, stream
        self.sinks = set(sinks) if is_main else set()
        self.started = time.perf_counter()
        self.first_step: int | None = None
        self.path = Path(output_dir) / "metrics.jsonl"
        self._file = None
        self._wandb = None
        if "jsonl" in self.sinks:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # Held open for the run and closed by close().
            self._file = open(self.path, "a" if append else "w", encoding="utf-8")  # noqa: SIM115
        if "wandb" in self.sinks:
            import wandb

            os.environ.setdefault("WANDB_MODE", "offline")
            self._wandb = wandb.init(
                project="megatron-mamba", name=run_name, dir=str(output_dir), config=config or {}
            )

    def log(self, step: int, values: dict[str, float]) -> None:
        if not self.sinks:
            return
        if self.first_step is None:
            self.first_step, self.started = step, time.perf_counter()
        elapsed = time.perf_counter() - self.started
        done = step - self.first_step
        eta = elapsed / done * (self.total_steps - step) if done else float("nan")
        if "console" in self.sinks:
            print(progress_line(step, self.total_steps, values, eta), file=self.stream, flush=True)
        if self._file is not None:
            record = {"step": step, "time": time.time(), **values}
            record = {k: None if _non_finite(v) else v for k, v in record.items()}
            self._file.write(json.dumps(record, allow_nan=False) + "\n")
            self._file.flush()
        if self._wandb is not None:
            self._wandb.log(values, step=step)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
        if self._wandb is not None:
            self._wandb.finish()


def _non_finite(value) -> bool:
    return isinstance(value, float) and not math.isfinite(value)


def read_metrics(path: str | Path) -> list[dict]:
    """Records of a metrics.jsonl; after a resume, later records of a step replace earlier ones.
    A null (a non-finite value when written) reads as NaN, so that numbers stay numbers."""
    by_step: dict[int, dict] = {}
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if line.strip():
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as error:
                    raise ValueError(f"{path}:{number} is not a JSON record") from error
                record = {k: float("nan") if v is None else v for k, v in record.items()}
                by_step[record["step"]] = record
    return [by_step[s] for s in sorted(by_step)]
