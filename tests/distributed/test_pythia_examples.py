"""The Pythia example scripts end to end with `--tiny` (tiny model, stand-in data made on the
spot), launched from outside the repo with relative paths: unguided has CE only, target-guided
adds the layer loss throughout, hybrid for the first 40% of the steps; every run learns and
leaves a checkpoint where the caller said."""

import subprocess
import sys

import pytest

from tests.distributed.launch import REPO, child_environment
from tests.distributed.train_runs import records

EXAMPLES = REPO / "examples" / "pythia"
STEPS = 32  # 128 samples × 2 epochs / global batch 8


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    out = tmp_path_factory.mktemp("pythia")
    # Launched from another directory, relative paths given are the caller's, and the
    # scripts find the package themselves.
    env = child_environment(PYTHON=sys.executable, TINY_DIR="inputs")
    env.pop("PYTHONPATH", None)
    for script in ("unguided", "target_guided", "hybrid"):
        proc = subprocess.run(
            ["bash", str(EXAMPLES / f"{script}.sh"), "--tiny", "train.output_dir=."],
            env=env,
            cwd=out,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert proc.returncode == 0, proc.stderr[-4000:]
    return out


@pytest.mark.parametrize(
    "name,layer_steps",
    [("LM_direct_05p", 0), ("LM_05p", STEPS), ("LM_05p_hybrid", round(0.4 * STEPS))],
)
def test_each_mode_runs_its_objective(runs, name, layer_steps):
    recs = records(runs / name)
    assert [r["step"] for r in recs] == list(range(1, STEPS + 1))
    assert sum("layer" in r for r in recs) == layer_steps
    assert all("layer" in r for r in recs[:layer_steps])
    assert recs[-1]["ce" if layer_steps else "loss"] < recs[0]["ce" if layer_steps else "loss"]
    assert (runs / name / "checkpoints" / "latest").read_text().strip() == f"step_{STEPS:08d}"
