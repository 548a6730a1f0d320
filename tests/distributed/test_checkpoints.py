"""Checkpoints under torchrun (gloo): a stopped and resumed run reproduces the uninterrupted one
exactly, at TP=1 and TP=2×PP=2, and continues at another layout; a save killed before it
commits leaves the previous checkpoint in charge; a save removes the checkpoints of later steps
(an abandoned run's); weights load at another layout; a checkpoint that does not fit (global
batch, LR schedule, Adam) fails clearly, while settings outside the schedule may change on a
resume."""

from pathlib import Path

import numpy as np
import pytest

from megatron_mamba.training.checkpoint import _prune
from tests.distributed.launch import torchrun
from tests.distributed.train_runs import (
    MODEL,
    TRAIN,
    losses,
    records,
    run,
    save_initial,
    settings,
    steps_and_values,
)

KILLED_IN_SAVE = Path(__file__).parent / "workers" / "train_killed_in_save.py"
PURE_BF16 = {"train.mixed_precision": "bf16", "train.fp32_master_weights": False}
LAYOUTS = {"tp1": (1, {}), "tp2pp2": (4, {"parallel.tensor": 2, "parallel.pipeline": 2})}


def checkpoint_names(run_dir: Path) -> list[str]:
    return sorted(p.name for p in (run_dir / "checkpoints").iterdir())


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_a_stopped_and_resumed_run_continues_exactly(tmp_path, items, initial, layout):
    nproc, parallel = LAYOUTS[layout]
    common = {**parallel, "train.init_from": initial}
    whole = run(tmp_path, items, "whole", nproc, **common, **{"train.checkpointing_steps": 2})
    assert checkpoint_names(tmp_path / "whole") == ["latest", "step_00000006", "step_00000008"]

    first = run(tmp_path, items, "cut", nproc, **common, **{"train.exit_interval": 3})
    assert [r["step"] for r in first] == [1, 2, 3]
    resumed = run(
        tmp_path, items, "cut", nproc, **common, **{"train.resume_from_checkpoint": "latest"}
    )
    assert steps_and_values(resumed) == steps_and_values(whole)


def saved_dtypes(checkpoint: Path) -> dict[str, set]:
    """The dtypes of a checkpoint's floating-point tensors: weights, and optimizer state."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    metadata = dcp.FileSystemReader(str(checkpoint)).read_metadata().state_dict_metadata
    dtypes = {"model": set(), "optimizer": set()}
    for key, m in metadata.items():
        if isinstance(m, TensorStorageMetadata) and m.properties.dtype.is_floating_point:
            dtypes["optimizer" if key.startswith("optimizer.") else "model"].add(m.properties.dtype)
    return dtypes


def test_bf16_without_master_weights_trains_on_cpu_and_resumes_exactly(tmp_path, items, initial):
    """train.fp32_master_weights=false: bf16 weights and Adam state, nothing in fp32; the loss
    falls as an fp32 run's does, and a run stopped twice (a chain of three jobs launched with
    resume_from_checkpoint=auto) continues as the uninterrupted one."""
    import torch

    common = {**PURE_BF16, "train.init_from": initial}
    whole = run(tmp_path, items, "whole", **common)
    fp32 = run(tmp_path, items, "fp32", **{"train.init_from": initial})
    assert losses(whole)[-1] < losses(whole)[0] - 0.5
    np.testing.assert_allclose(losses(whole), losses(fp32), atol=0.02)  # measured: 0.004
    assert saved_dtypes(latest_checkpoint(tmp_path / "whole")) == {
        "model": {torch.bfloat16},
        "optimizer": {torch.bfloat16},
    }
    # a job chain, every job the same command: resume=auto starts fresh, then resumes
    chain = {**common, "train.exit_interval": 3, "train.resume_from_checkpoint": "auto"}
    assert [r["step"] for r in run(tmp_path, items, "cut", **chain)] == [1, 2, 3]
    run(tmp_path, items, "cut", **chain)
    resumed = run(tmp_path, items, "cut", **chain)
    assert steps_and_values(resumed) == steps_and_values(whole)


def latest_checkpoint(run_dir: Path) -> Path:
    checkpoints = run_dir / "checkpoints"
    return checkpoints / (checkpoints / "latest").read_text().strip()


def test_a_save_killed_before_commit_leaves_the_previous_checkpoint(tmp_path, items, initial):
    common = {"train.init_from": initial, "train.checkpointing_steps": 3}
    whole = run(tmp_path, items, "whole", **common)
    with pytest.raises(AssertionError, match="exitcode: 17"):
        run(tmp_path, items, "killed", script=KILLED_IN_SAVE, script_args=["2"], **common)
    killed = tmp_path / "killed"
    assert (killed / "checkpoints" / "latest").read_text().strip() == "step_00000003"
    assert "step_00000006.partial" in checkpoint_names(killed)
    assert [r["step"] for r in records(killed)] == list(range(1, 7))

    run(tmp_path, items, "killed", **common, **{"train.resume_from_checkpoint": "latest"})
    assert steps_and_values(records(killed)[6:]) == steps_and_values(whole[3:])
    assert checkpoint_names(killed) == ["latest", "step_00000006", "step_00000008"]


def test_a_resume_with_changes_keeps_the_old_config_until_its_first_save(tmp_path, items):
    """config.yaml says what the checkpoints were trained with: a run resuming them with
    changes that dies before it saves leaves it as it was, so they resume as they were."""
    run(tmp_path, items, "changed", **{"train.exit_interval": 3})
    config = (tmp_path / "changed" / "config.yaml").read_text()
    changed = {
        "train.resume_from_checkpoint": "latest",
        "train.resume_with_changes": True,
        "train.trainable": "mamba",
        "train.exit_interval": 3,
    }
    with pytest.raises(AssertionError, match="exitcode: 17"):
        run(tmp_path, items, "changed", script=KILLED_IN_SAVE, script_args=["1"], **changed)
    assert (tmp_path / "changed" / "config.yaml").read_text() == config
    run(tmp_path, items, "changed", **changed)  # resumed from step 3 again, saved at 6
    assert "trainable: mamba" in (tmp_path / "changed" / "config.yaml").read_text()


def test_a_new_run_in_an_old_directory_is_refused_or_told_to_replace_it(tmp_path, items):
    """Refused before anything is written, unless train.overwrite_output_dir. Replacing: the old
    run's step_6 and step_8 are newer than the new run's step_4: keeping them would let pruning
    delete step_4, which `latest` names. The new run's metrics start afresh."""
    run(tmp_path, items, "again", **{"train.checkpointing_steps": 2})
    assert checkpoint_names(tmp_path / "again") == ["latest", "step_00000006", "step_00000008"]
    metrics = (tmp_path / "again" / "metrics.jsonl").read_text()
    shorter = {"train.max_steps": 4, "train.checkpointing_steps": 2}
    with pytest.raises(AssertionError, match=r"holds an earlier run's checkpoints \(steps 6, 8\)"):
        run(tmp_path, items, "again", **shorter)
    assert checkpoint_names(tmp_path / "again") == ["latest", "step_00000006", "step_00000008"]
    assert (tmp_path / "again" / "metrics.jsonl").read_text() == metrics
    again = run(tmp_path, items, "again", **shorter, **{"train.overwrite_output_dir": True})
    assert checkpoint_names(tmp_path / "again") == ["latest", "step_00000002", "step_00000004"]
    assert (tmp_path / "again" / "checkpoints" / "latest").read_text().strip() == "step_00000004"
    assert [r["step"] for r in again] == [1, 2, 3, 4]


def test_pruning_keeps_the_saved_step_and_the_newest_before_it(tmp_path):
    for name in ("step_00000002", "step_00000004", "step_00000006", "step_00000010"):
        (tmp_path / name).mkdir()
    (tmp_path / "step_00000012.partial").mkdir()  # a save in progress is not pruned
    (tmp_path / "latest").write_text("step_00000006\n")
    _prune(tmp_path, 6, keep=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "latest",
        "step_00000004",
        "step_00000006",
        "step_00000012.partial",
    ]


def test_pruning_spares_the_protected_steps(tmp_path):
    for name in ("step_00000002", "step_00000003", "step_00000004", "step_00000006"):
        (tmp_path / name).mkdir()
    _prune(tmp_path, 6, keep=1, protected=(3, 8))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step_00000003", "step_00000006"]


def test_kept_steps_are_saved_off_the_cadence_and_survive(tmp_path, items):
    overrides = {"train.checkpointing_steps": 4, "train.keep_checkpoint_steps": "[3]"}
    run(tmp_path, items, "kept", **overrides, **{"train.keep_last_checkpoints": 1})
    assert checkpoint_names(tmp_path / "kept") == ["latest", "step_00000003", "step_00000008"]


MODELS = {
    # mamba1 (classic: in_proj stored as [x, z] blocks), GPTNeoX attention, tied embeddings
    "gpt-neox-MA": {},
    # mamba2 and grouped mamba1 from the attention layout, SwiGLU (strided fc1), GQA
    "llama-SM": {
        "preset": "tiny-llama",
        "model.layer_pattern": "SM",
        "model.mamba.layout": "attention",
    },
}


@pytest.fixture(scope="module", params=list(MODELS))
def step3(request, tmp_path_factory, items):
    """A TP=1 run stopped after step 3: its checkpoint, its model and its first loss."""
    model = MODELS[request.param]
    tmp = tmp_path_factory.mktemp("step3")
    recs = run(tmp, items, "src", **model, **{"train.exit_interval": 3})
    return tmp / "src" / "checkpoints" / "step_00000003", model, recs[0]["loss"]


@pytest.mark.parametrize("name", list(MODELS))
def test_a_run_resumes_at_another_layout(tmp_path, items, name):
    """Stopped at TP=2×PP=2 and resumed on two data-parallel replicas at TP=1, a run continues
    as the uninterrupted one-process run (to the rounding of another reduction order): weights,
    Adam's moments and step, schedule and data position all carry over."""
    initial = save_initial(tmp_path / "initial.pt", {**MODEL, **MODELS[name]})
    model = {**MODELS[name], "train.init_from": initial}
    whole = run(tmp_path, items, "whole", **model)
    parallel = {"parallel.tensor": 2, "parallel.pipeline": 2, "train.exit_interval": 3}
    run(tmp_path, items, "moved", 4, **model, **parallel)
    replicas = {"train.per_device_train_batch_size": 2, "train.resume_from_checkpoint": "latest"}
    moved = run(tmp_path, items, "moved", 2, **model, **replicas)
    assert [(r["step"], r["lr"]) for r in moved] == [(r["step"], r["lr"]) for r in whole]
    for key in ("loss", "grad_norm"):
        np.testing.assert_allclose(
            [r[key] for r in moved], [r[key] for r in whole], rtol=1e-5, err_msg=key
        )


def test_weights_load_at_another_layout(tmp_path, items, step3):
    """A run started from a TP=1 checkpoint's weights at TP=2×PP=2 sees the TP=1 losses."""
    checkpoint, model, untrained_loss = step3
    fresh = {**model, "train.init_from": checkpoint, "train.max_steps": 3}
    single = losses(run(tmp_path, items, "tp1", **fresh))
    parallel = {"parallel.tensor": 2, "parallel.pipeline": 2}
    split = losses(run(tmp_path, items, "tp2pp2", 4, **fresh, **parallel))
    np.testing.assert_allclose(split, single, rtol=2e-5)
    assert single[0] < untrained_loss - 0.05  # the same first batch, now on trained weights


@pytest.mark.parametrize(
    "overrides,message",
    [  # a config without the checkpoint's conv biases would drop them silently
        (
            {"model.mamba.conv_bias": False},
            "holds weights this model has no place for: .*conv1d.bias",
        ),
        (
            {"model.mamba.d_conv": 2},
            r"holds weights of other shapes than this model's: "
            r"decoder.layers.0.mixer.conv1d.weight \(\d+, 1, 4\) in it, "
            r"\(\d+, 1, 2\) in this model",
        ),
    ],
    ids=["unused", "shape"],
)
def test_weights_that_do_not_fit_the_model_are_refused_in_one_line(
    tmp_path, items, step3, overrides, message
):
    checkpoint, model, _ = step3
    fresh = {**model, "train.init_from": checkpoint, **overrides}
    with pytest.raises(AssertionError, match=message) as refused:
        run(tmp_path, items, "unfit", **fresh)
    assert "Traceback" not in str(refused.value)  # one line, not a stack


def test_a_teacher_with_mamba_layers_is_refused_naming_the_setting(tmp_path, items, step3):
    """The teacher is built attention-only; a hybrid's checkpoint has mixers it has no place for."""
    checkpoint, model, _ = step3
    teacher = {**model, "distill.teacher": checkpoint, "train.max_steps": 1}
    refusal = f"distill.teacher={checkpoint} \\(expected the attention-only model\\): "
    with pytest.raises(AssertionError, match=refusal + ".*has no place for: .*mixer"):
        run(tmp_path, items, "hybrid-teacher", **teacher)


def test_a_file_of_whole_tensors_of_another_model_is_refused_in_one_line(tmp_path, items):
    other = save_initial(
        tmp_path / "other.pt", {"preset": "tiny-gpt-neox", "model.vocab_size": 200}
    )
    with pytest.raises(AssertionError, match=f"{other} does not fit this model: ") as refused:
        run(tmp_path, items, "unfit", **{"train.init_from": other, "model.mamba.d_conv": 2})
    assert "Traceback" not in str(refused.value)


@pytest.mark.parametrize(
    "overrides,message",
    [
        ({"train.per_device_train_batch_size": 2}, "was trained with global_batch=4"),
        ({"train.learning_rate": 1e-3}, "train.learning_rate = 0.003; this run has 0.001"),
        ({"train.max_steps": 6}, r"decay steps \(.*\) = 8; this run has 6"),
        ({"train.warmup_steps": 1}, r"warmup steps \(.*\) = 2; this run has 1"),
        ({"train.adam_eps": 1e-3}, r"train.adam_eps = 1e-08; this run has 0.001"),
        ({"train.seed": 7}, r"was trained with seed=\d+; this run has 7"),
        (PURE_BF16, "was trained with train.mixed_precision=no; this run has bf16"),
        (
            {"train.weight_decay_mamba_only": True},
            "was trained with train.weight_decay_mamba_only=False; this run has True",
        ),
    ],
    ids=[
        "global-batch",
        "learning-rate",
        "decay",
        "warmup",
        "adam",
        "seed",
        "numerics",
        "decayed-parameters",
    ],
)
def test_resuming_from_a_checkpoint_that_does_not_fit_fails_clearly(
    tmp_path, items, step3, overrides, message
):
    checkpoint, model, _ = step3
    resume = {**model, "train.resume_from_checkpoint": checkpoint, **overrides}
    with pytest.raises(AssertionError, match=message):
        run(tmp_path, items, "misfit", **resume)


def test_a_variant_resuming_under_the_runs_name_is_refused_and_writes_nothing(items, step3):
    """A run that names step3's run but starts from other weights would continue its training
    as if it were its own (training/resume.refuse_changed_run)."""
    checkpoint, model, _ = step3
    run_dir = checkpoint.parents[1]
    before = checkpoint_names(run_dir), (run_dir / "config.yaml").read_text()
    variant = {**model, "train.init_from": checkpoint, "train.resume_from_checkpoint": "latest"}
    refusal = r"was trained with other settings than this run's \(train.init_from: null → "
    with pytest.raises(AssertionError, match=refusal):
        run(run_dir.parent, items, "src", **variant)
    assert (checkpoint_names(run_dir), (run_dir / "config.yaml").read_text()) == before


def test_a_corpus_resume_with_another_item_length_is_refused(tmp_path, items):
    """Corpus (and chat) data are cut into items of data.item_length: another length would read
    other items from the checkpoint's step on (the pre-shuffled Pile refuses it by itself)."""
    from tests.helpers.tiny_tokenizer import make_tokenizer

    corpus = {"data.kind": "corpus", "data.tokenizer": make_tokenizer(tmp_path / "tok", 200)}
    run(tmp_path, items, "corpus", **corpus, **{"train.exit_interval": 3})
    resume = {"data.item_length": 17, "train.resume_from_checkpoint": "latest"}
    with pytest.raises(AssertionError, match="was trained with item_length=33; this run has 17"):
        run(tmp_path, items, "corpus", **corpus, **resume)


def test_resuming_a_finished_run_says_there_is_nothing_left(tmp_path, items):
    """A finished job launched again (resume=latest) succeeds without training or saving."""
    steps = {"train.max_steps": 4}
    run(tmp_path, items, "done", **steps)
    again = settings(tmp_path, items, "done", **steps, **{"train.resume_from_checkpoint": "latest"})
    output = torchrun(TRAIN, 1, *(f"{k}={v}" for k, v in again.items()))
    assert "step_00000004 is at step 4 of 4: nothing left to train" in output
    assert [r["step"] for r in records(tmp_path / "done")] == [1, 2, 3, 4]


def test_a_run_without_data_path_names_the_setting(tmp_path, items):
    with pytest.raises(AssertionError, match="data.path is not set; data.kind=pythia expects a"):
        run(tmp_path, items, "nodata", **{"data.path": "''"})  # as if unset
    assert not (tmp_path / "nodata").exists()


def test_resuming_without_a_checkpoint_names_what_is_missing(tmp_path, items):
    with pytest.raises(AssertionError, match=r"no checkpoint to resume: .*latest does not exist"):
        run(tmp_path, items, "none", **{"train.resume_from_checkpoint": "latest"})


def test_a_resume_may_change_what_the_lr_schedule_does_not_hold(tmp_path, items):
    """The seed's hybrid run: a target-guided run resumed with the layer loss off; and more
    steps, with the decay kept where it was."""
    teacher = save_initial(
        tmp_path / "teacher.pt", {"preset": "tiny-gpt-neox", "model.vocab_size": 200}
    )
    guided = {
        "distill.teacher": teacher,
        "distill.alpha_layer_distill_loss": 15.0,
        "distill.distill_skip_last": 0,
    }
    first = run(tmp_path, items, "guided", **guided, **{"train.exit_interval": 2})
    assert [r["step"] for r in first] == [1, 2]
    resumed = {
        **guided,
        "distill.alpha_layer_distill_loss": 0.0,
        "train.resume_from_checkpoint": "latest",
        "train.max_steps": 10,
        "train.lr_decay_steps": 8,
    }
    steps = [r["step"] for r in run(tmp_path, items, "guided", **resumed)]
    assert steps == list(range(1, 11))


def test_a_constant_schedule_resumes_for_more_steps(tmp_path, items):
    """A constant LR has no decay to keep: a resume may run longer (and its LR stays put)."""
    constant = {"train.lr_scheduler_type": "constant", "train.warmup_steps": 0}
    run(tmp_path, items, "flat", **constant, **{"train.exit_interval": 2})
    longer = {**constant, "train.resume_from_checkpoint": "latest", "train.max_steps": 10}
    resumed = run(tmp_path, items, "flat", **longer)
    assert [r["step"] for r in resumed] == list(range(1, 11))
    assert {r["lr"] for r in resumed} == {3e-3}
