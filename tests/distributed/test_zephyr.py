"""The Zephyr examples end to end on the tiny stand-in: progressive distillation (25% then 50%
Mamba, only the mixers training), SFT at 50% and 25% attention, DPO; and the SFT (by KL) and DPO
objectives under TP=2×PP=2 giving the single-process losses (gloo)."""

import math
import subprocess
import sys

import numpy as np
import pytest

from megatron_mamba.convert.native_files import read_native
from megatron_mamba.convert.progressive import stepwise_pattern
from megatron_mamba.runtime import init_runtime
from megatron_mamba.training.checkpoint import read_model_config
from tests.distributed.launch import REPO, child_environment, torchrun
from tests.distributed.train_runs import records

EXAMPLES = REPO / "examples" / "zephyr"
TINY = [
    "train.mixed_precision=no",
    "train.learning_rate=3e-3",
    "train.warmup_steps=2",
    "train.warmup_ratio=0",
    "train.per_device_train_batch_size=2",
    "train.global_batch_size=4",
    "train.checkpointing_steps=null",
    "train.save_at_end=false",
    "train.max_steps=3",
    "data.item_length=64",
]


@pytest.fixture(scope="module")
def zephyr(tmp_path_factory):
    out = tmp_path_factory.mktemp("zephyr")
    env = child_environment(PYTHON=sys.executable, OUT=str(out), PYTHONPATH=str(REPO))
    stages = [
        ("progressive", {}),
        ("sft", {"ATTN": "50"}),
        ("sft", {"ATTN": "50", "PACK": "1"}),  # a variant: its own run, not the one above
        ("sft", {"ATTN": "25", "PACK": "1"}),  # continues the packed variant
        ("dpo", {}),
        ("progressive", {"STEPWISE": "1", "STEPS": "2"}),  # reuses the teacher and inputs
    ]
    for script, settings in stages:
        proc = subprocess.run(
            ["bash", str(EXAMPLES / f"{script}.sh"), "--tiny"],
            env={**env, **settings},
            capture_output=True,
            text=True,
            timeout=900,
        )
        assert proc.returncode == 0, f"{script} {settings}: {proc.stderr[-4000:]}"
    return out


def _weights(path):
    init_runtime(seed=0)
    return read_native(path, read_model_config(path))


def _mixer_layers(state, layers):
    return {n for n in state if any(n.startswith(f"decoder.layers.{i}.mixer.") for i in layers)}


def test_stage_one_trains_only_the_mamba_mixers(zephyr):
    start, trained = _weights(zephyr / "init_0.25_mamba"), _weights(zephyr / "zephyr_0.25_mamba")
    assert read_model_config(zephyr / "zephyr_0.25_mamba").layer_pattern == "MAAAMAAA"
    mamba = _mixer_layers(start, (0, 4))
    assert mamba and all(not (start[n] == trained[n]).all() for n in mamba if "A_log" not in n)
    for name in start.keys() - mamba:
        assert (start[name] == trained[name]).all(), f"{name} is frozen but changed"


def test_the_second_stage_starts_from_the_first(zephyr):
    first, second = _weights(zephyr / "zephyr_0.25_mamba"), _weights(zephyr / "init_0.50_mamba")
    assert read_model_config(zephyr / "init_0.50_mamba").layer_pattern == "MAMAMAMA"
    for name in _mixer_layers(first, (0, 4)) | _mixer_layers(first, (1, 3, 5, 7)):
        assert (first[name] == second[name]).all(), name
    assert any(n.startswith("decoder.layers.2.mixer.in_proj") for n in second)
    stage = records(zephyr / "zephyr_0.50_mamba")
    assert {"ce", "logits_kl"} <= stage[0].keys()


def test_stepwise_stages_add_a_layer_each_on_their_own_slice(zephyr):
    """STEPWISE=1: stage k swaps MambaInLlama's k-th layer into stage k−1's model and trains on
    the k-th of SLICES (4 in the tiny run) chunks of each pseudo-label source, concatenated."""
    first, second = zephyr / "zephyr_step_1_mamba", zephyr / "zephyr_step_2_mamba"
    assert read_model_config(first).layer_pattern == stepwise_pattern(8, 1) == "MAAAAAAA"
    assert read_model_config(second).layer_pattern == stepwise_pattern(8, 2) == "MAMAAAAA"
    trained, started = _weights(first), _weights(zephyr / "init_step_2_mamba")
    for name in _mixer_layers(trained, (0,)):
        assert (trained[name] == started[name]).all(), name
    sources = [(zephyr / "inputs" / f"labels_{s}.jsonl").read_text().splitlines() for s in "ab"]
    for k, run in enumerate((first, second)):
        data = zephyr / "data" / f"step_{k + 1}.jsonl"
        assert f"path: {data}" in (run / "config.yaml").read_text()
        expected = []
        for lines in sources:
            size = -(-len(lines) // 4)  # torch.chunk's chunk size
            expected += lines[k * size : (k + 1) * size]
        assert data.read_text().splitlines() == expected
        assert records(run)[-1]["step"] == len(expected) // 8  # global batch 8


def test_sft_variants_learn_each_in_its_own_run_and_dpo_starts_from_its_reference(zephyr):
    for run, pattern, packed in (
        ("zephyr_0.50_mamba_sft", "MAMAMAMA", False),
        ("zephyr_0.50_mamba_sft_packed", "MAMAMAMA", True),
        ("zephyr_0.75_mamba_sft_packed", "MMMAMMMA", True),
    ):
        steps = records(zephyr / run)  # packed: full rows, every token
        assert steps[-1]["loss"] < steps[0]["loss"]
        assert read_model_config(zephyr / run).layer_pattern == pattern
        config = (zephyr / run / "config.yaml").read_text()
        assert f"pack: {str(packed).lower()}" in config
    assert f"init_from: {zephyr / 'init_0.75_mamba_sft_packed'}" in config
    dpo = records(zephyr / "mamba_0_5_dpo_ep1")
    # The policy starts as its reference: every pair scores log 2 with zero rewards.
    assert dpo[0]["dpo"] == pytest.approx(math.log(2), abs=1e-6)
    assert dpo[0]["reward_margin"] == 0 and dpo[0]["reward_accuracy"] == 0
    assert dpo[-1]["reward_margin"] != 0
    assert (zephyr / "mamba_0_5_dpo_ep1" / "checkpoints" / "latest").is_file()


def _run(zephyr, config, name, nproc, *overrides):
    args = [
        "--config",
        str(EXAMPLES / f"{config}.yaml"),
        f"train.output_dir={zephyr}",
        f"train.run_name={name}",
        f"data.tokenizer={zephyr / 'inputs' / 'zephyr-hf'}",
        *TINY,
        *overrides,
    ]
    torchrun(REPO / "megatron_mamba" / "train.py", nproc, *args)
    return records(zephyr / name)


@pytest.mark.parametrize(
    "config,objective",
    [
        ("dpo", ["data.path={inputs}/prefs.jsonl", "dpo.beta=0.5", "data.max_prompt_length=32"]),
        (
            "sft",
            [
                "data.path={inputs}/chat.jsonl",
                "distill.teacher={out}/teacher",
                "distill.alpha_logits_distill_loss=1",
            ],
        ),
    ],
)
def test_tp2_pp2_gives_the_single_process_losses(zephyr, config, objective):
    settings = [s.format(inputs=zephyr / "inputs", out=zephyr) for s in objective] + [
        f"train.init_from={zephyr / 'zephyr_0.50_mamba_sft'}"
    ]
    one = _run(zephyr, config, f"{config}-tp1", 1, *settings)
    four = _run(
        zephyr, config, f"{config}-tp2pp2", 4, *settings, "parallel.tensor=2", "parallel.pipeline=2"
    )
    _assert_same_losses(four, one)


def test_a_precomputed_reference_gives_the_losses_of_the_reference_run_in_each_step(zephyr):
    """dpo.precompute_reference: the reference's log-probabilities from one pass before the
    first step, under TP=2×PP=2 and under DP=2 (13 pairs: the pass's last micro-batches are
    filled up with repeats), give the losses of the reference running beside the policy."""
    settings = [
        f"data.path={zephyr / 'inputs' / 'prefs.jsonl'}",
        "dpo.beta=0.5",
        "data.max_prompt_length=32",
        f"train.init_from={zephyr / 'zephyr_0.50_mamba_sft'}",
        "train.max_train_samples=13",
    ]
    beside = _run(zephyr, "dpo", "dpo-beside", 1, *settings)
    for name, nproc, layout in (
        ("dpo-precomputed-tp2pp2", 4, ["parallel.tensor=2", "parallel.pipeline=2"]),
        ("dpo-precomputed-dp2", 2, []),
    ):
        precomputed = _run(
            zephyr, "dpo", name, nproc, *settings, "dpo.precompute_reference=true", *layout
        )
        _assert_same_losses(precomputed, beside)


def _assert_same_losses(got: list[dict], expected: list[dict]) -> None:
    assert len(got) == len(expected) == 3
    assert expected[-1]["loss"] != pytest.approx(expected[0]["loss"])  # the model has moved
    for key in expected[0]:
        if key in ("step", "tokens_per_s", "lr") or key not in got[0]:
            continue
        np.testing.assert_allclose(
            [r[key] for r in got], [r[key] for r in expected], rtol=1e-4, atol=1e-6, err_msg=key
        )
