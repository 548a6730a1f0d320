"""Unit tests run in one process: a world of one (gloo on CPU), TP=PP=1."""

import pytest

from megatron_mamba.runtime import init_runtime


@pytest.fixture(scope="session")
def runtime():
    return init_runtime(seed=1234)
