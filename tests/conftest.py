"""Test tiers (`gpu`-marked tests run only where CUDA is present), and the trainer tests' shared
tiny data and initial weights."""

import pytest
import torch

from tests.distributed.train_runs import save_initial, write_items


def pytest_collection_modifyitems(config, items):
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
