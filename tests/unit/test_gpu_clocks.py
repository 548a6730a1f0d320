"""benchmarks/gpu_clocks.py: samples go to the side whose step began last, and the sampler reads
nvidia-smi's CSV lines (here a stand-in script on PATH), skipping what it cannot parse."""

import os
import stat
import time

import pytest

from benchmarks.gpu_clocks import ClockSampler, attribute


def test_each_sample_goes_to_the_side_that_began_last():
    tags = [(1.0, "theirs"), (2.0, "ours"), (3.0, "theirs")]
    samples = [(0.5, 9.0, 9.0), (1.2, 1980, 600), (1.8, 1970, 620), (2.0, 1800, 700)]
    samples += [(2.5, 1700, 690), (2.9, 1750, 700), (3.5, 1990, 610)]
    summary = attribute(tags, samples)
    assert summary["theirs"] == {"sm_mhz": 1980, "watts": 610, "samples": 3}
    assert summary["ours"] == {"sm_mhz": 1750, "watts": 700, "samples": 3}


def test_the_sampler_reads_nvidia_smi_lines(tmp_path, monkeypatch):
    fake = tmp_path / "nvidia-smi"
    fake.write_text(
        "#!/bin/sh\n"
        'echo "$@" > "$(dirname "$0")/args"\n'
        "while true; do echo '1500, 412.25'; echo '[N/A], [N/A]'; sleep 0.01; done\n"
    )
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,1")
    with ClockSampler(period_ms=10) as clocks:
        step = clocks.tagged("ours", lambda: time.sleep(0.3))
        step()
    summary = clocks.summary()
    assert summary["ours"]["sm_mhz"] == 1500 and summary["ours"]["watts"] == 412.25
    assert summary["ours"]["samples"] >= 3
    args = (tmp_path / "args").read_text()
    assert "--id=3" in args and "-lms=10" in args


def test_the_sampler_says_when_nvidia_smi_is_missing(monkeypatch):
    monkeypatch.setattr("shutil.which", lambda name: None)
    with pytest.raises(RuntimeError, match="needs nvidia-smi on PATH"):
        ClockSampler()


def test_the_speedup_table_shows_clocks_where_sampled(capsys):
    from benchmarks.common import print_speedups, round_speedups

    report = {"theirs": round_speedups([2.0, 2.0], [2.0, 2.0])}
    report["ours"] = round_speedups([2.0, 2.0], [1.6, 1.7])
    report["ours"]["clock"] = {"sm_mhz": 1755.0, "watts": 690.0, "samples": 40}
    print_speedups(report, "rounds")
    lines = capsys.readouterr().out.splitlines()
    header = "| side | × baseline per round | median | median SM MHz | median W | J a step |"
    assert lines[1] == header
    assert lines[3] == "| theirs | 1.00, 1.00 | 1.00 | nan | nan | nan |"
    assert lines[4] == "| ours | 1.25, 1.18 | 1.21 | 1755 | 690 | 1138.5 |"  # 690 W × 1.65 s
    print_speedups({"theirs": report["theirs"]}, "rounds")
    assert capsys.readouterr().out.splitlines()[1] == "| side | × baseline per round | median |"
