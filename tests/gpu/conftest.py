import pytest

from tests.gpu.zephyr_runs import make_sft


@pytest.fixture(scope="session")
def sft(tmp_path_factory):
    return make_sft(tmp_path_factory.mktemp("dpo"))
