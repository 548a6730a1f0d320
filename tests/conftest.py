"""Test tiers (`gpu`-marked tests run only where CUDA is present), and the trainer tests' shared
tiny data and initial weights."""

import pytest
import torch

from tests.distributed.train_runs import save_initial, write_items

# The files whose module fixtures run example scripts end to end (minutes each on 2 cores),
# longest first: collected first, xdist's workers start on them and share the short files after,
# instead of one worker meeting them last while the other idles.
LONG_FIRST = ("test_quickstart.py", "test_zephyr.py", "test_pythia_examples.py")


def _long_first(item) -> int:
    name = item.path.name
    return LONG_FIRST.index(name) if name in LONG_FIRST else len(LONG_FIRST)


def pytest_collection_modifyitems(config, items):
    items.sort(key=_long_first)  # stable: every other order kept
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def items(tmp_path_factory):
    return write_items(tmp_path_factory.mktemp("data") / "items")


@pytest.fixture(scope="session")
def initial(tmp_path_factory):
    return save_initial(tmp_path_factory.mktemp("init") / "initial.pt")
