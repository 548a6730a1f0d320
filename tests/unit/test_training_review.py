"""Review fixes: a crash while a checkpoint is deleted leaves no half checkpoint under a step's
name (`latest` never names one); a warmup_ratio that ends at lr_decay_steps fails `--dry-run`."""

import shutil
from pathlib import Path

import pytest

from megatron_mamba.models.presets import preset
from megatron_mamba.train import main
from megatron_mamba.training import checkpoint
from megatron_mamba.training.checkpoint import find_checkpoint, save_checkpoint, step_dir

REAL_RMTREE = shutil.rmtree


class Killed(BaseException):
    """The process dying mid-delete."""


class Stub:
    def sharded_state_dict(self, *args, **kwargs):
        return {}

    def state_dict(self):
        return {}


def fake_save(state, directory):
    """A checkpoint of two files: the tensors (tagged) and metadata.json."""
    Path(directory, "tensors").write_text(state["progress"]["tag"])
    Path(directory, "metadata.json").write_text("{}")


def dying_rmtree(path, *args, **kwargs):
    """Deletes the tensors first, then dies (metadata.json is left behind)."""
    Path(path, "tensors").unlink()
    raise Killed


@pytest.fixture
def saving(runtime, monkeypatch, tmp_path):
    monkeypatch.setattr(checkpoint, "sharded_model_state", lambda model: {})
    monkeypatch.setattr(checkpoint.dist_checkpointing, "save", fake_save)
    config = preset("tiny-gpt-neox")

    def save(step: int, tag: str):
        stub = Stub()
        return save_checkpoint(tmp_path, step, None, stub, stub, {"tag": tag}, 2, config)

    return save


def test_a_crash_replacing_a_resaved_step_leaves_latest_whole(saving, monkeypatch, tmp_path):
    """A run resumed from step 2 saves step 4 again while `latest` names the old step 4."""
    for step in (2, 4):
        saving(step, "old")
    monkeypatch.setattr(checkpoint.shutil, "rmtree", dying_rmtree)
    with pytest.raises(Killed):
        saving(4, "new")
    latest = find_checkpoint("latest", tmp_path)
    assert (latest / "tensors").read_text() == "new"
    monkeypatch.setattr(checkpoint.shutil, "rmtree", REAL_RMTREE)
    saving(6, "next")  # removes what the crash left
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "latest",
        "step_00000004",
        "step_00000006",
    ]


def test_a_crash_while_pruning_leaves_no_half_checkpoint(saving, monkeypatch, tmp_path):
    for step in (2, 4):
        saving(step, "old")
    monkeypatch.setattr(checkpoint.shutil, "rmtree", dying_rmtree)
    with pytest.raises(Killed):
        saving(6, "new")  # prunes step 2
    assert not step_dir(tmp_path, 2).exists()
    assert (find_checkpoint("latest", tmp_path) / "tensors").read_text() == "new"


def test_a_warmup_ratio_reaching_lr_decay_steps_fails_the_dry_run(capsys):
    args = ["preset=tiny-llama", "train.warmup_ratio=0.95", "train.lr_decay_steps=10"]
    assert main(["--dry-run", *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "error: train: warmup_ratio=0.95 of lr_decay_steps=10 gives 10 warmup steps, not below "
        "it (rounded up); the LR would fall from its peak to min_lr at once"
    ]
