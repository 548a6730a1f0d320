"""The README's main job, in its small setting: the quickstart runs end to end on CPU; the
retrained students beat the freshly converted one on held-out text, the export loads with
transformers and generates, and the table and loss curves are written."""

import subprocess
import sys

from tests.distributed.launch import REPO, child_environment


def _report(path):
    lines = [line for line in path.read_text().splitlines() if line.startswith("| ")]
    header = [cell.strip() for cell in lines[0].strip("|").split("|")]
    rows = [
        dict(zip(header, (c.strip() for c in line.strip("|").split("|")), strict=True))
        for line in lines[1:]
    ]
    return {row["model"]: row for row in rows}


def test_quickstart_end_to_end(tmp_path):
    out = tmp_path / "quickstart"
    env = child_environment(PYTHON=sys.executable, OUT=str(out), CUDA_VISIBLE_DEVICES="")
    proc = subprocess.run(
        ["bash", str(REPO / "examples" / "quickstart" / "run.sh"), "--small"],
        env=env,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]

    report = _report(out / "report.md")
    assert list(report) == ["teacher", "converted", "target_guided", "hybrid"]
    assert report["teacher"]["layers"] == "AAAA" and report["hybrid"]["layers"] == "AMAS"
    converted = float(report["converted"]["held-out loss"])
    for student in ("target_guided", "hybrid"):
        assert float(report[student]["held-out loss"]) < converted - 0.05, report
        assert 0 <= float(report[student]["quickstart_mc (acc)"]) <= 1
    assert "GPTNeoXHybridForCausalLM from" in proc.stdout  # the export loaded with transformers
    generated = [line for line in proc.stdout.splitlines() if " → " in line and "'" in line]
    assert len(generated) == 3, proc.stdout[-3000:]
    for run in ("teacher", "target_guided", "hybrid"):
        assert (out / f"{run}.png").stat().st_size > 10_000
