"""Every CPU patch is needed (its scenario fails without it) and sufficient (passes with it)."""

from pathlib import Path

import pytest
import torch

from megatron_mamba.runtime.cpu_compat import PATCHES, CpuRNGStatesTracker
from tests.distributed.launch import launch
from tests.unit.cpu_compat_scenarios import TWO_PROCESSES

SCENARIOS = Path(__file__).with_name("cpu_compat_scenarios.py")


def _run(scenario: str, patches: list[str]):
    """The scenario in fresh processes (two under torchrun's environment where it needs them)
    forked before any patch is applied."""
    nproc = 2 if scenario in TWO_PROCESSES else None
    return launch(SCENARIOS, nproc, scenario, *patches, timeout=300)


@pytest.mark.parametrize("patch", sorted(PATCHES))
def test_patch_is_needed_and_sufficient(patch):
    others = [p for p in PATCHES if p != patch]
    without = _run(patch, others)
    assert without.returncode != 0, f"scenario {patch} passed without its patch"
    assert "Torch not compiled with CUDA enabled" in without.stderr, without.stderr[-2000:]
    with_all = _run(patch, list(PATCHES))
    assert with_all.returncode == 0, with_all.stderr[-4000:]
    assert "scenario ok" in with_all.stdout


def test_cpu_tracker_forks_an_independent_stream_and_restores_the_outer_one():
    tracker = CpuRNGStatesTracker()
    tracker.add("tp", 11)
    torch.manual_seed(0)
    expected_outer = torch.rand(4)
    torch.manual_seed(0)
    with tracker.fork("tp"):
        inside_first = torch.rand(4)
    with tracker.fork("tp"):
        inside_second = torch.rand(4)
    outer = torch.rand(4)
    torch.testing.assert_close(outer, expected_outer)
    reference = torch.Generator().manual_seed(11)
    torch.testing.assert_close(inside_first, torch.rand(4, generator=reference))
    torch.testing.assert_close(inside_second, torch.rand(4, generator=reference))


def test_cpu_tracker_refuses_a_reused_seed():
    tracker = CpuRNGStatesTracker()
    tracker.add("a", 1)
    with pytest.raises(ValueError, match="seed 1"):
        tracker.add("b", 1)
