"""Which checkpoint a run resumes from, and when a run is refused because it would replace an
earlier run's checkpoints (training/resume.py)."""

from pathlib import Path

import pytest

from megatron_mamba.training.bad_steps import TrainingError
from megatron_mamba.training.config import TrainConfig
from megatron_mamba.training.resume import resume_decision


def _config(tmp_path: Path, **fields) -> TrainConfig:
    return TrainConfig(output_dir=str(tmp_path), run_name="run", **fields)


def _checkpoints(tmp_path: Path, *steps: int, latest: bool = True) -> Path:
    root = tmp_path / "run" / "checkpoints"
    root.mkdir(parents=True)
    for step in steps:
        (root / f"step_{step:08d}").mkdir()
    (root / "step_00000099.partial").mkdir()  # an unfinished save is no checkpoint
    if latest and steps:
        (root / "latest").write_text(f"step_{max(steps):08d}\n")
    return root


def test_a_run_without_checkpoints_starts_fresh_even_with_auto(tmp_path):
    _checkpoints(tmp_path)
    assert resume_decision(_config(tmp_path)) is None
    assert resume_decision(_config(tmp_path, resume_from_checkpoint="auto")) is None


def test_auto_resumes_the_newest_checkpoint_with_or_without_latest(tmp_path):
    assert resume_decision(_config(tmp_path / "a", resume_from_checkpoint="auto")) is None
    _checkpoints(tmp_path / "a", 3, 6)
    assert resume_decision(_config(tmp_path / "a", resume_from_checkpoint="auto")) == "latest"
    root = _checkpoints(tmp_path / "b", 3, 6, latest=False)  # a crash before `latest` moved
    chosen = resume_decision(_config(tmp_path / "b", resume_from_checkpoint="auto"))
    assert chosen == str(root / "step_00000006")


def test_a_fresh_run_over_checkpoints_is_refused_unless_told_to_replace_them(tmp_path):
    _checkpoints(tmp_path, 3, 6)
    with pytest.raises(TrainingError, match=r"steps 3, 6\), which this run would replace"):
        resume_decision(_config(tmp_path))
    assert resume_decision(_config(tmp_path, overwrite_output_dir=True)) is None


def test_resuming_its_own_checkpoint_is_allowed_another_runs_is_not(tmp_path):
    root = _checkpoints(tmp_path, 3, 6)
    own = str(root / "step_00000003")
    assert resume_decision(_config(tmp_path, resume_from_checkpoint=own)) == own
    assert resume_decision(_config(tmp_path, resume_from_checkpoint="latest")) == "latest"
    other = str(tmp_path / "teacher" / "checkpoints" / "step_00000009")
    with pytest.raises(TrainingError, match=f"resumed from {other}, would replace"):
        resume_decision(_config(tmp_path, resume_from_checkpoint=other))
    allowed = _config(tmp_path, resume_from_checkpoint=other, overwrite_output_dir=True)
    assert resume_decision(allowed) == other
    fresh = _config(tmp_path / "elsewhere", resume_from_checkpoint=other)
    assert resume_decision(fresh) == other  # a new run directory: nothing to replace


def test_an_interrupted_re_save_of_a_step_is_undone_before_resuming(tmp_path):
    """A crash after step 6's old checkpoint was set aside and before its new save took the
    name: `latest` names a missing directory; the old checkpoint is put back and resumed, where
    `auto` would otherwise have found no step 6 (here: no checkpoint at all, a fresh start)."""
    root = _checkpoints(tmp_path, 6)
    (root / "step_00000006").rename(root / "step_00000006.old.partial")
    (root / "step_00000006.old.partial" / "metadata.json").write_text("{}")
    (root / "step_00000006.partial").mkdir()  # the new save, never renamed
    assert resume_decision(_config(tmp_path, resume_from_checkpoint="auto")) == "latest"
    assert (root / "step_00000006" / "metadata.json").is_file()
    assert not (root / "step_00000006.old.partial").exists()


def test_nothing_is_restored_where_the_named_step_exists(tmp_path):
    root = _checkpoints(tmp_path, 6)
    (root / "step_00000006.old.partial").mkdir()  # left by a crash while deleting it
    assert resume_decision(_config(tmp_path, resume_from_checkpoint="auto")) == "latest"
    assert (root / "step_00000006.old.partial").is_dir() and (root / "step_00000006").is_dir()


def _run(tmp_path: Path, **sections):
    """A whole run's config over the tiny GPTNeoX, its config.yaml written as a run writes it."""
    from megatron_mamba.training.run_config import RunConfig

    train = _config(tmp_path, resume_from_checkpoint="latest", **sections.pop("train", {}))
    return RunConfig(preset="tiny-gpt-neox", train=train, **sections)


def _trained(tmp_path: Path, run) -> None:
    from megatron_mamba.config_io import dump

    _checkpoints(tmp_path, 3)
    (tmp_path / "run" / "config.yaml").write_text(dump(run))


def test_a_resume_under_another_objective_data_or_start_is_refused_naming_each(tmp_path):
    """A recipe's variant launched under the run's name (here: packed chats, from other
    weights, with a teacher) would continue the earlier training under its own settings."""
    from megatron_mamba.distill.config import DistillConfig
    from megatron_mamba.training.resume import refuse_changed_run
    from megatron_mamba.training.run_config import DataConfig

    chat = {"kind": "chat", "path": "chats.jsonl", "tokenizer": "tokenizer"}
    _trained(tmp_path, _run(tmp_path, data=DataConfig(**chat)))
    init = tmp_path / "weights.pt"
    init.write_bytes(b"")
    teacher = str(tmp_path / "teacher.pt")
    Path(teacher).write_bytes(b"")
    variant = _run(
        tmp_path,
        data=DataConfig(**chat, pack=True, train_on="all"),
        distill=DistillConfig(teacher=teacher),
        train={"init_from": str(init)},
    )
    with pytest.raises(TrainingError) as refused:
        refuse_changed_run(variant, "latest")
    message = str(refused.value)
    for change in (
        "data.pack: false → true",
        "data.train_on: assistant → all",
        f"distill.teacher: null → {teacher}",
        f"train.init_from: null → {init}",
    ):
        assert change in message
    assert "train.resume_with_changes=true" in message
    allowed = _run(tmp_path, data=DataConfig(**chat, pack=True, train_on="all"))
    allowed.train.resume_with_changes = True
    refuse_changed_run(allowed, "latest")  # told to: continues


def test_the_losses_weights_may_change_on_resume_and_are_printed(tmp_path, capsys):
    """CALD's hybrid run: target-guided, then resumed with the layer loss off."""
    from megatron_mamba.distill.config import DistillConfig
    from megatron_mamba.training.resume import refuse_changed_run

    teacher = tmp_path / "teacher.pt"
    teacher.write_bytes(b"")
    guided = DistillConfig(teacher=str(teacher), alpha_layer_distill_loss=15.0)
    _trained(tmp_path, _run(tmp_path, distill=guided))
    unguided = DistillConfig(teacher=str(teacher), alpha_layer_distill_loss=0.0)
    refuse_changed_run(_run(tmp_path, distill=unguided, train={"max_steps": 9}), "latest")
    assert "distill.alpha_layer_distill_loss: 15.0 → 0.0" in capsys.readouterr().out
    refuse_changed_run(_run(tmp_path, distill=guided, train={"max_steps": 9}), "latest")
    assert capsys.readouterr().out == ""  # a longer run of the same settings: nothing to say


def test_another_runs_checkpoint_or_a_run_without_config_is_not_compared(tmp_path):
    from megatron_mamba.training.resume import refuse_changed_run
    from megatron_mamba.training.run_config import DataConfig

    _trained(tmp_path, _run(tmp_path))
    variant = _run(tmp_path, data=DataConfig(path="other"))
    refuse_changed_run(variant, str(tmp_path / "teacher" / "checkpoints" / "step_00000009"))
    (tmp_path / "run" / "config.yaml").unlink()
    refuse_changed_run(variant, "latest")
