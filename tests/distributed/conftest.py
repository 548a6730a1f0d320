"""Shared fixtures of the trainer tests: tiny data and one set of initial weights."""

import pytest

from tests.distributed.train_runs import save_initial, write_items


@pytest.fixture(scope="session")
def items(tmp_path_factory):
    return write_items(tmp_path_factory.mktemp("data") / "items")


@pytest.fixture(scope="session")
def initial(tmp_path_factory):
    return save_initial(tmp_path_factory.mktemp("init") / "initial.pt")
