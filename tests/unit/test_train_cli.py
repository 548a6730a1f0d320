"""The training entry point: bad input ends with one `error:` line and a non-zero exit, never a
traceback; a preset's model overrides are type-checked like a whole model section."""

import pytest

from megatron_mamba.config_io import ConfigError, load
from megatron_mamba.data.indexed import DatasetError
from megatron_mamba.train import main
from megatron_mamba.training import trainer
from megatron_mamba.training.checkpoint import CheckpointError
from megatron_mamba.training.run_config import RunConfig


def one_error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def test_preset_overrides_are_typed_as_a_model_section():
    run = load(
        RunConfig,
        None,
        ["preset=tiny-gpt-neox", "model.norm_eps=1e-6", "model.mamba.dt_min=1e-3"],
    )
    model = run.model_config()
    assert model.norm_eps == 1e-6 and model.mamba.dt_min == 1e-3
    assert model.hidden_size == 64  # the preset's
    for override, match in [
        ("model.mamba.chunk_size=true", "model.mamba.chunk_size=True must be int"),
        ("model.norm_eps=abc", "model.norm_eps='abc' must be a number"),
        ("model.nonsense=3", r"unknown key\(s\) \['nonsense'\] in model"),
    ]:
        with pytest.raises(ConfigError, match=match):
            load(RunConfig, None, ["preset=tiny-gpt-neox", override])


@pytest.mark.parametrize(
    "args,expected",
    [
        (["preset=nonexistent"], "error: preset='nonexistent' is unknown; known presets: pyth"),
        (["preset=tiny-llama", "model.num_query_groups=0"], "error: model: num_query_groups=0"),
        ([], "error: no model: set preset, the model.* fields"),
        (
            ["train.init_from=/no/such/checkpoint"],
            "error: train.init_from=/no/such/checkpoint does",
        ),
        (["preset=tiny-llama", "parallel.first_stage_layers=1"], "error: parallel: first_stage"),
        (["preset=tiny-llama", "parallel.tensor=3"], "error: parallel: tensor-parallel size 3"),
        (["--config", "/no/run.yaml"], "error: config file /no/run.yaml does not exist"),
        (["preset=tiny-llama", "data.tokenizer="], "error: data.tokenizer is empty (null); it "),
    ],
)
def test_bad_input_is_one_error_line(capsys, args, expected):
    assert main(["--dry-run", *args]) == 2
    assert one_error(capsys).startswith(expected)


def test_init_from_a_directory_that_is_no_checkpoint(capsys, tmp_path):
    for args in ([], ["preset=tiny-llama"]):
        assert main(["--dry-run", f"train.init_from={tmp_path}", *args]) == 2
        assert "is not a complete checkpoint" in one_error(capsys)


@pytest.mark.parametrize(
    "setting", ["train.init_from", "train.init_from_attention", "distill.teacher", "dpo.reference"]
)
def test_weights_that_are_missing_or_an_hf_directory_are_named_before_the_run(
    capsys, tmp_path, setting
):
    base = ["--dry-run", "preset=tiny-gpt-neox"]
    missing = tmp_path / "missing"
    assert main([*base, f"{setting}={missing}"]) == 2
    assert one_error(capsys) == f"error: {setting}={missing} does not exist"
    (tmp_path / "config.json").write_text("{}")
    assert main([*base, f"{setting}={tmp_path}"]) == 2
    assert one_error(capsys) == (
        f"error: {setting}: {tmp_path} is a transformers directory, not a native checkpoint: "
        "import it first (tools/convert_hf_to_native.py)"
    )


def test_yaml_errors_name_the_file_and_line(capsys, tmp_path):
    broken, twice = tmp_path / "broken.yaml", tmp_path / "twice.yaml"
    broken.write_text("train:\n  learning_rate: [1\n")
    twice.write_text("train:\n  learning_rate: 1.0e-3\ntrain:\n  min_lr: 1.0e-2\n")
    assert main(["--dry-run", "--config", str(broken), "preset=tiny-llama"]) == 2
    assert one_error(capsys).startswith(f"error: {broken}, line 3: expected ',' or ']'")
    assert main(["--dry-run", "--config", str(twice), "preset=tiny-llama"]) == 2
    assert (
        one_error(capsys) == f"error: {twice}, line 3: key 'train' is given twice (first on line 1)"
    )


def test_overrides_may_follow_the_flags_and_fill_an_empty_section(capsys, tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text("preset: tiny-llama\ntrain:\n")
    assert main(["--dry-run", "--config", str(config), "train.seed=7", "model.num_layers=3"]) == 0
    out = capsys.readouterr().out
    assert "seed: 7" in out and "#   num_layers: 3" in out


@pytest.fixture
def fake_train(monkeypatch):
    """main() with train() replaced by `behaviour` (and no runtime to shut down)."""
    import megatron_mamba.runtime

    monkeypatch.setattr(megatron_mamba.runtime, "shutdown_runtime", lambda: None)

    def use(behaviour):
        monkeypatch.setattr(trainer, "train", behaviour)

    return use


def test_world_size_is_checked_before_training(capsys, monkeypatch, fake_train):
    fake_train(lambda run: pytest.fail("trained with a layout that does not fit the world"))
    monkeypatch.setenv("WORLD_SIZE", "3")
    assert main(["preset=tiny-llama", "parallel.tensor=2"]) == 2
    assert one_error(capsys).startswith(
        "error: parallel.tensor × parallel.pipeline = 2 × 1 does not divide the 3 process(es)"
    )


@pytest.mark.parametrize(
    "error", [trainer.TrainingError, CheckpointError, DatasetError, ConfigError, FileNotFoundError]
)
def test_errors_of_the_run_are_one_line_per_rank(capsys, monkeypatch, fake_train, error):
    def fail(run):
        raise error("no checkpoint to resume")

    fake_train(fail)
    assert main(["preset=tiny-llama"]) == 1
    assert one_error(capsys) == "error: no checkpoint to resume"
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert main(["preset=tiny-llama"]) == 1
    assert one_error(capsys) == "error: [rank 1] no checkpoint to resume"


def test_a_bad_config_is_printed_by_rank_zero_only(capsys, monkeypatch):
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert main(["preset=nonexistent"]) == 2
    assert capsys.readouterr().err == ""


def test_a_bug_keeps_its_traceback(fake_train):
    def bug(run):
        raise KeyError("a bug")

    fake_train(bug)
    with pytest.raises(KeyError, match="a bug"):
        main(["preset=tiny-llama"])


@pytest.mark.parametrize(
    "args,expected",
    [
        (
            ["train.init_from_attention={w}", "train.init_from={w}"],
            "error: train: init_from={w} and init_from_attention={w} are both set; keep one",
        ),
        (["train.run_name=../escape"], "error: train: run_name='../escape' must be a plain folder"),
        (["train.run_name=.."], "error: train: run_name='..' must be a plain folder"),
        (
            ["distill.alpha_ce_loss=0"],
            "error: distill: alpha_ce_loss=0.0 weighs the cross-entropy against distillation "
            "losses, so it needs distill.teacher",
        ),
    ],
)
def test_settings_that_would_be_silently_ignored_are_refused(capsys, tmp_path, args, expected):
    """init_from's weights would be overwritten by init_from_attention's shared ones; a run_name
    with a path would write outside output_dir; alpha_ce_loss weighs nothing without a teacher."""
    weights = tmp_path / "weights.pt"
    weights.write_bytes(b"")
    args = [a.format(w=weights) for a in args]
    assert main(["--dry-run", "preset=tiny-gpt-neox", *args]) == 2
    assert one_error(capsys).startswith(expected.format(w=weights))


def test_a_global_batch_the_replicas_cannot_share_stops_before_any_process_group(
    capsys, monkeypatch, fake_train
):
    fake_train(lambda run: pytest.fail("started with a global batch the replicas cannot share"))
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert main(["preset=tiny-llama", "train.global_batch_size=3"]) == 2
    assert one_error(capsys).startswith(
        "error: train.global_batch_size=3 is not a multiple of per_device_train_batch_size × "
        "data-parallel size = 1 × 2"
    )
