"""The runtime's parallel state: other sizes are refused while it is up (gloo, 2 ranks)."""

from pathlib import Path

from tests.distributed.launch import torchrun

WORKER = Path(__file__).parent / "workers" / "runtime_sizes.py"


def test_other_sizes_are_refused_while_initialised():
    assert torchrun(WORKER, 2).count("ok") == 2
