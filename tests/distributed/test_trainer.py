"""The trainer end to end under torchrun (gloo): the loss falls, metrics and config are written,
and TP=2, data parallelism and gradient accumulation reproduce the single-process losses; a
step with a non-finite loss or gradients is skipped (and still saves and stops), non-finite
weights are never saved, and a run that cannot start writes nothing."""

import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

from tests.distributed.launch import REPO, launch
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

POISONED = Path(__file__).parent / "workers" / "train_poisoned.py"


def poisoned_run(tmp_path, items, name, kind, steps, **overrides):
    """A run whose loss ("loss") or gradients ("grad") are NaN at `steps`; how it ended."""
    args = settings(tmp_path, items, name, **overrides)
    return launch(POISONED, 1, kind, steps, *(f"{k}={v}" for k, v in args.items()))


def checkpoint_is_finite(checkpoint: Path) -> bool:
    """Whether every tensor of a checkpoint (weights, optimizer state) is finite."""
    import torch
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    metadata = dcp.FileSystemReader(str(checkpoint)).read_metadata().state_dict_metadata
    state = {
        key: torch.empty(m.size, dtype=m.properties.dtype)
        for key, m in metadata.items()
        if isinstance(m, TensorStorageMetadata)
    }
    with warnings.catch_warnings():  # "assuming the intent is to load in a single process"
        warnings.simplefilter("ignore")
        dcp.load(state, checkpoint_id=str(checkpoint), no_dist=True)
    return bool(state) and all(torch.isfinite(t).all() for t in state.values())


def latest(run_dir: Path) -> Path:
    checkpoints = run_dir / "checkpoints"
    return checkpoints / (checkpoints / "latest").read_text().strip()


def poisoned_weights(tmp_path, initial) -> Path:
    import torch

    poisoned = torch.load(initial, weights_only=True)
    poisoned["embedding.word_embeddings.weight"][:] = float("nan")
    path = tmp_path / "nan.pt"
    torch.save(poisoned, path)
    return path


def test_training_reduces_the_loss_and_writes_its_record(tmp_path, items):
    records = run(tmp_path, items, "one", **{"train.max_steps": 12})
    assert [r["step"] for r in records] == list(range(1, 13))
    assert records[0]["lr"] == 0.0 and records[2]["lr"] == pytest.approx(3e-3)
    assert losses(records)[-1] < losses(records)[0] - 1.0
    saved = (tmp_path / "one" / "config.yaml").read_text()
    assert "layer_pattern: MA" in saved and "max_steps: 12" in saved


@pytest.fixture(scope="module")
def reference(tmp_path_factory, items, initial):
    return losses(run(tmp_path_factory.mktemp("ref"), items, "ref", **{"train.init_from": initial}))


@pytest.mark.parametrize(
    "nproc,overrides",
    [
        (2, {"parallel.tensor": 2}),
        (2, {"train.per_device_train_batch_size": 2}),  # 2 data-parallel replicas
        (1, {"train.per_device_train_batch_size": 2, "train.gradient_accumulation_steps": 2}),
        (1, {"train.recompute": "full"}),  # activations recomputed in backward: same numbers
    ],
    ids=["tp2", "dp2", "accumulation", "recompute"],
)
def test_layouts_reproduce_the_single_process_losses(
    tmp_path, items, initial, reference, nproc, overrides
):
    got = losses(run(tmp_path, items, "layout", nproc, **overrides, **{"train.init_from": initial}))
    np.testing.assert_allclose(got, reference, rtol=2e-5)


def test_fresh_mixers_start_alike_at_every_layout(tmp_path, items):
    """CALD's student (the teacher's weights, its Mamba mixers fresh) is the same run at any
    TP/PP: each layer's mixer draws its values whole, from the run's seed and its layer number,
    not per TP rank or in the order a pipeline stage builds its layers."""
    teacher = save_initial(
        tmp_path / "teacher.pt", {**MODEL, "model.layer_pattern": "AAAA", "model.num_layers": 4}
    )
    student = {
        "model.layer_pattern": "MAMA",
        "model.num_layers": 4,
        "train.init_from_attention": teacher,
        "train.max_steps": 2,
        "train.save_at_end": False,
    }
    layouts = {
        "one": (1, {}),
        "tp2": (2, {"parallel.tensor": 2}),
        "pp2": (2, {"parallel.pipeline": 2}),
    }
    found = {
        name: losses(run(tmp_path, items, name, nproc, **student, **parallel))
        for name, (nproc, parallel) in layouts.items()
    }
    for name in ("tp2", "pp2"):
        np.testing.assert_allclose(found[name], found["one"], rtol=2e-6, err_msg=name)


def test_bad_config_exits_before_training(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(TRAIN), "preset=tiny-gpt-neox", "train.warmup_ratio=2"],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={"PYTHONPATH": str(REPO), "PATH": ""},
    )
    assert proc.returncode == 2
    expected = "error: train: warmup_ratio=2.0 must be in [0, 1)"
    assert proc.stderr.strip().splitlines()[-1] == expected


def test_non_finite_losses_stop_the_run_with_a_clear_error(tmp_path, items, initial):
    overrides = {"train.init_from": poisoned_weights(tmp_path, initial), "train.max_bad_steps": 3}
    with pytest.raises(
        AssertionError, match=r"3 consecutive steps were skipped \(step 3: a non-finite loss"
    ):
        run(tmp_path, items, "nan", **overrides)
    got = records(tmp_path / "nan")
    assert [(r["step"], r["skipped"]) for r in got] == [(1, 1), (2, 1), (3, 1)]


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_on_cpu_fails_clearly(tmp_path, items, precision):
    with pytest.raises(AssertionError, match=f"mixed_precision={precision} needs a GPU"):
        run(tmp_path, items, "mp", **{"train.mixed_precision": precision})


def test_distributed_optimizer_on_cpu_fails_clearly(tmp_path, items):
    with pytest.raises(AssertionError, match="use_distributed_optimizer=true needs GPUs"):
        run(tmp_path, items, "zero1", **{"train.use_distributed_optimizer": True})


def test_non_finite_gradients_are_skipped_like_a_non_finite_loss(tmp_path, items):
    """NaN gradients under a finite loss (fp32: megatron's optimizer does not check them) are not
    applied: the run goes on exactly as when the step's loss is NaN, with a warning."""
    by_loss = poisoned_run(tmp_path, items, "loss", "loss", "3")
    by_grad = poisoned_run(tmp_path, items, "grad", "grad", "3")
    assert by_loss.returncode == by_grad.returncode == 0, by_grad.stderr[-3000:]
    assert "warning: step 3 skipped, its update not applied: a non-finite loss" in by_loss.stderr
    warning = "warning: step 3 skipped, its update not applied: non-finite gradients"
    assert warning in by_grad.stderr
    got, by_loss_records = records(tmp_path / "grad"), records(tmp_path / "loss")
    assert [r["step"] for r in got] == list(range(1, 9))
    assert [r["skipped"] for r in got] == [0, 0, 1, 0, 0, 0, 0, 0]
    applied = [r for r in got if not r["skipped"]]
    assert steps_and_values(applied) == steps_and_values(
        [r for r in by_loss_records if not r["skipped"]]
    )
    assert checkpoint_is_finite(latest(tmp_path / "grad"))


def test_consecutive_non_finite_gradients_stop_the_run_keeping_a_good_checkpoint(tmp_path, items):
    overrides = {"train.max_bad_steps": 3, "train.checkpointing_steps": 2}
    done = poisoned_run(tmp_path, items, "stop", "grad", "3,4,5", **overrides)
    assert done.returncode != 0
    assert "3 consecutive steps were skipped (step 5: non-finite gradients" in done.stderr
    # saved at the skipped step 4, with the weights of step 2
    assert latest(tmp_path / "stop").name == "step_00000004"
    assert checkpoint_is_finite(latest(tmp_path / "stop"))


@pytest.mark.parametrize("stop", ["exit_interval", "max_steps"])
def test_a_skipped_step_still_saves_validates_and_stops(tmp_path, items, stop):
    """A step skipped for its NaN loss still ends the run at exit_interval or at the end, with
    its checkpoint, and is validated where validation is due."""
    validation = {"train.eval_interval": 3, "data.valid_path": items, "data.valid_windows": 4}
    done = poisoned_run(tmp_path, items, "skip", "loss", "3", **{f"train.{stop}": 3}, **validation)
    assert done.returncode == 0, done.stderr[-3000:]
    got = records(tmp_path / "skip")
    assert [(r["step"], r["skipped"]) for r in got] == [(1, 0), (2, 0), (3, 1)]
    assert "valid_loss" in got[2] and "valid_loss" not in got[1]
    assert latest(tmp_path / "skip").name == "step_00000003"
    assert "warning: step 3 skipped" in done.stderr


def test_non_finite_weights_are_never_saved(tmp_path, items, initial):
    overrides = {"train.init_from": poisoned_weights(tmp_path, initial), "train.max_steps": 2}
    with pytest.raises(AssertionError, match="the weights are not finite at step 2; they are not"):
        run(tmp_path, items, "nan", **overrides, **{"train.max_bad_steps": 10})
    assert not (tmp_path / "nan" / "checkpoints").exists()


def test_max_steps_beyond_the_data_fails_clearly(tmp_path, items):
    """64 items in global batches of 4 give 16 steps; asking for 17 fails before training."""
    message = r"train.max_steps=17 is more than the data gives: .* = 16 steps \(64 items"
    with pytest.raises(AssertionError, match=message):
        run(tmp_path, items, "long", **{"train.max_steps": 17})
    assert not (tmp_path / "long").exists()


def test_a_run_that_cannot_start_writes_nothing(tmp_path, items):
    missing = {"train.eval_interval": 2, "data.valid_path": tmp_path / "missing"}
    with pytest.raises(AssertionError, match="missing.idx does not exist"):
        run(tmp_path, items, "novalid", **missing)
    assert not (tmp_path / "novalid").exists()


@pytest.mark.parametrize(
    "case", ["valid-windows", "output-dir-a-file", "init-from-no-tensors", "batch-not-shared"]
)
def test_inputs_the_run_cannot_use_are_refused_before_it_trains(tmp_path, items, case):
    """Each refused in one line before any step (so nothing of the run is written): too few
    held-out windows for one validation batch (it used to fail at the first validation, hours
    in), an output_dir that is a file, weights that are no torch file (torch's advice to
    unpickle anyway is not passed on), a global batch the replicas cannot share."""
    (tmp_path / "afile").write_text("x")
    overrides, message, nproc = {
        "valid-windows": (
            {"train.eval_interval": 2, "data.valid_path": items, "data.valid_windows": 2},
            r"data.valid_windows=2 is fewer than one validation batch \(per_device_train_batch_"
            r"size × data-parallel size = 4\); raise it",
            1,
        ),
        "output-dir-a-file": (
            {"train.output_dir": tmp_path / "afile"},
            "cannot be made: .*afile is a file; expected a directory or a new path",
            1,
        ),
        "init-from-no-tensors": (
            {"train.init_from": f"{items}.idx"},
            r"train.init_from=.*items.idx is neither a checkpoint directory nor a torch file",
            1,
        ),
        "batch-not-shared": (
            {"train.global_batch_size": 6, "train.per_device_train_batch_size": 2},
            r"global_batch_size=6 is not a multiple of .* = 2 × 2",
            2,
        ),
    }[case]
    with pytest.raises(AssertionError, match=message) as refused:
        run(tmp_path, items, "refused", nproc, **overrides)
    assert "Traceback" not in str(refused.value) and "weights_only" not in str(refused.value)
    assert not (tmp_path / "refused").exists()


def test_settings_a_run_leaves_without_effect_are_said(tmp_path, items):
    teacher = save_initial(
        tmp_path / "teacher.pt", {"preset": "tiny-gpt-neox", "model.vocab_size": 200}
    )
    overrides = {
        "train.max_steps": 2,
        "train.warmup_steps": 5,
        "train.keep_checkpoint_steps": "[9]",
        "train.save_at_end": False,
        "distill.teacher": teacher,
        "distill.alpha_layer_distill_loss": 1.0,
        "distill.layer_distill_until_step": 2,
        "model.max_position_embeddings": 16,
    }
    args = settings(tmp_path, items, "unused", **overrides)
    done = launch(TRAIN, 1, *(f"{k}={v}" for k, v in args.items()))
    assert done.returncode == 0, done.stderr[-4000:]
    for said in (
        "warning: train warmup of 5 steps is not below the schedule's 2",
        "warning: distill.layer_distill_until_step=2 is not before the run's last step (2)",
        "warning: train.keep_checkpoint_steps [9] lie beyond the run's 2 steps",
        "warning: data.item_length=33 trains on 32 positions, beyond the model's "
        "max_position_embeddings=16",
    ):
        assert said in done.stderr, said


def test_a_fresh_run_replaces_the_metrics_of_an_earlier_one(tmp_path, items):
    run(tmp_path, items, "again", **{"train.max_steps": 3, "train.save_at_end": False})
    again = run(tmp_path, items, "again", **{"train.max_steps": 2, "train.save_at_end": False})
    assert [r["step"] for r in again] == [1, 2]
