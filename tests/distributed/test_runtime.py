"""The runtime's parallel state: other sizes are refused until it is shut down (gloo, 2 ranks)."""

from pathlib import Path

from tests.distributed.launch import torchrun

WORKER = Path(__file__).parent / "workers" / "runtime_sizes.py"


def test_other_sizes_need_a_shutdown_first():
    assert torchrun(WORKER, 2).count("ok") == 2
