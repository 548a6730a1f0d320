"""benchmarks/device_run.sh: its step table is well formed (one device call runs at most 600 s,
so no step may be allowed more) and a step it does not know stops it before anything runs."""

import os
import re
import subprocess
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "device_run.sh"


def _steps() -> list[tuple[str, int, str]]:
    table = re.search(r"STEPS='\n(.*?)\n'", SCRIPT.read_text(), re.S).group(1)
    steps = []
    for line in filter(str.strip, table.splitlines()):
        name, limit, command = line.split(maxsplit=2)
        steps.append((name, int(limit), command))
    return steps


def test_every_step_has_one_name_a_limit_within_a_call_and_a_command():
    steps = _steps()
    names = [name for name, _, _ in steps]
    assert {"logit_test", "adamw_test", "dpo_graphs", "mamba_graphs"} <= set(names)
    assert len(names) == len(set(names)), names
    for name, limit, command in steps:
        assert 0 < limit <= 600, (name, limit)
        assert command and "'" not in command, name  # the table is single-quoted


def test_an_unknown_step_stops_before_running_anything(tmp_path):
    result = subprocess.run(
        ["bash", str(SCRIPT), "logit_test", "no_such_step"],
        env=os.environ | {"OUT": str(tmp_path)},
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    assert "unknown step 'no_such_step'" in result.stderr
    assert not list(tmp_path.iterdir())  # logit_test did not run
