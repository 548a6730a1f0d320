"""The Zephyr scripts' starting weights (examples/zephyr/common.sh): made when missing, made again
when the run they come from has saved since (a stage trained over), else kept. The Python they
would run is a stub that records its arguments."""

import os
import subprocess
from pathlib import Path

from tests.distributed.launch import REPO

COMMON = REPO / "examples" / "zephyr" / "common.sh"


def _stub_python(tmp_path, record: str) -> tuple[str, Path]:
    """A stand-in interpreter that runs the shell line `record` (its arguments into $CALLS)
    instead of Python; returns its path and the log it writes."""
    stub = tmp_path / "python"
    stub.write_text(f"#!/usr/bin/env bash\n{record}\n")
    stub.chmod(0o755)
    log = tmp_path / "calls"
    log.write_text("")
    return str(stub), log


def _swapped(tmp_path, *calls: str) -> list[str]:
    stub, log = _stub_python(tmp_path, 'echo "$*" >> "$CALLS"')
    script = f"source {COMMON}; " + "; ".join(f"swapped {c}" for c in calls)
    env = {**os.environ, "PYTHON": stub, "CALLS": str(log), "OUT": str(tmp_path / "out")}
    subprocess.run(["bash", "-c", script], env=env, cwd=tmp_path, check=True, timeout=60)
    return [line.split()[1:3] for line in log.read_text().splitlines()]


def test_starting_weights_are_made_again_only_after_their_run_saved(tmp_path):
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    (tmp_path / "run" / "checkpoints" / "latest").write_text("step_00000008\n")
    (tmp_path / "stale").mkdir()
    os.utime(tmp_path / "stale", (0, 0))  # made before the run's last save
    (tmp_path / "current").mkdir()  # made after it
    made = _swapped(tmp_path, "run MAMA stale", "run MAMA current", "run MAMA missing")
    assert made == [["run", "stale"], ["run", "missing"]]


PYTHIA_COMMON = REPO / "examples" / "pythia" / "common.sh"


def _pythia_train_args(tmp_path, *args: str) -> list[str]:
    stub, log = _stub_python(tmp_path, 'printf "%s\\n" "$@" > "$CALLS"')
    script = f'source {PYTHIA_COMMON}; train "$@"'
    env = {**os.environ, "PYTHON": stub, "CALLS": str(log), "NPROC": "1"}
    subprocess.run(["bash", "-c", script, "-", *args], env=env, cwd=tmp_path, check=True)
    return log.read_text().splitlines()


def test_pythia_students_start_from_the_teacher_unless_init_from_gives_their_weights(tmp_path):
    """The scripts pass train.init_from_attention=$TEACHER; with train.init_from among the
    arguments they leave it out (the run refuses both: the teacher's shared tensors would
    overwrite init_from's)."""
    plain = _pythia_train_args(tmp_path, "train.run_name=x")
    assert any(a.startswith("train.init_from_attention=") for a in plain)
    given = _pythia_train_args(tmp_path, "train.init_from=ckpt", "train.run_name=x")
    assert "train.init_from=ckpt" in given
    assert not any(a.startswith("train.init_from_attention=") for a in given)


def test_the_quickstart_refuses_more_gpus_than_torch_sees_before_writing(tmp_path):
    out = tmp_path / "quickstart"
    script = REPO / "examples" / "quickstart" / "run.sh"
    for gpus, message in (("64", "--gpus 64: torch sees"), ("two", "expected a number")):
        done = subprocess.run(
            ["bash", str(script), "--gpus", gpus],
            env={**os.environ, "OUT": str(out)},
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 2 and message in done.stderr, done.stderr
    assert not out.exists()
