"""The README's main job: the quickstart trains (TP=2 over 2 processes) and its loss falls."""

import re
from pathlib import Path

from tests.distributed.launch import REPO, torchrun

SCRIPT = REPO / "examples" / "quickstart" / "train_tiny.py"


def test_quickstart_loss_falls():
    assert Path(SCRIPT).exists()
    out = torchrun(SCRIPT, 2, "--tp", "2", "--steps", "20")
    losses = {int(s): float(v) for s, v in re.findall(r"step\s+(\d+)\s+loss\s+([\d.]+)", out)}
    assert losses.keys() == {1, 10, 20}, out
    assert losses[20] < losses[1] - 1.0, losses
