"""On the GPU machine: DPO of a tiny Mistral hybrid (mamba1 from attention) in bf16 over NCCL,
the reference's log-probabilities computed before training (dpo.precompute_reference) against
the reference running in each step."""

import math
import subprocess
import sys

import numpy as np
import pytest

from tests.distributed.launch import REPO, run_script, torchrun
from tests.distributed.train_runs import TRAIN, records

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def sft(tmp_path_factory):
    """The tiny Zephyr stand-in's inputs and a hybrid of it, as the DPO stage starts from."""
    out = tmp_path_factory.mktemp("dpo")
    subprocess.run(
        [sys.executable, str(REPO / "examples" / "zephyr" / "make_tiny.py"), str(out / "inputs")],
        check=True,
        capture_output=True,
    )
    run_script(
        REPO / "tools" / "convert_hf_to_native.py",
        out / "inputs" / "zephyr-hf",
        out / "sft",
        "--layer-pattern",
        "MAMAMAMA",
        "--mamba",
        "layout=attention",
        "--mamba",
        "init=attention",
    )
    return out


def _dpo(sft, name, *overrides):
    args = [
        "--config",
        str(REPO / "examples" / "zephyr" / "dpo.yaml"),
        f"train.output_dir={sft}",
        f"train.run_name={name}",
        f"train.init_from={sft / 'sft'}",
        f"data.tokenizer={sft / 'inputs' / 'zephyr-hf'}",
        f"data.path={sft / 'inputs' / 'prefs.jsonl'}",
        "data.item_length=64",
        "data.max_prompt_length=32",
        "dpo.beta=0.5",
        "train.learning_rate=1e-4",
        "train.warmup_ratio=0",
        "train.per_device_train_batch_size=4",
        "train.global_batch_size=8",
        "train.max_steps=4",
        "train.checkpointing_steps=null",
        "train.save_at_end=false",
        "train.report_to=[jsonl]",
        *overrides,
    ]
    torchrun(TRAIN, 1, *args, cpu=False)
    return records(sft / name)


def test_precomputed_reference_follows_the_reference_in_each_step(sft):
    beside = _dpo(sft, "beside")
    precomputed = _dpo(sft, "precomputed", "dpo.precompute_reference=true")
    assert beside[0]["dpo"] == pytest.approx(math.log(2), abs=1e-6)
    assert beside[-1]["reward_margin"] != 0  # the policy has moved
    for key in ("dpo", "reward_margin", "logp_chosen", "logp_rejected"):
        got, expected = ([r[key] for r in rs] for rs in (precomputed, beside))
        # bf16: the reference's log-probabilities from batches of other composition
        np.testing.assert_allclose(got, expected, rtol=2e-2, atol=2e-2, err_msg=key)
