"""YAML + dotted overrides into typed configs; bad keys and values fail naming their path."""

from dataclasses import dataclass, field

import pytest

from megatron_mamba.config import ModelConfig, ParallelConfig
from megatron_mamba.config_io import ConfigError, build, dump, load
from megatron_mamba.training.config import TrainConfig


@dataclass
class Run:
    model: ModelConfig
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


YAML = """
model:
  arch: gpt_neox
  num_layers: 4
  hidden_size: 64
  num_attention_heads: 4
  ffn_hidden_size: 256
  vocab_size: 200
  layer_pattern: AMAM
  mamba: {layout: attention, init: attention}
parallel: {tensor: 2}
train:
  learning_rate: 3.0e-4
  min_lr: 3.0e-5
  report_to: [console, jsonl]
"""


def test_yaml_with_overrides_builds_typed_configs(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text(YAML)
    run = load(
        Run,
        path,
        ["train.learning_rate=1e-3", "model.mamba.d_state=8", "parallel.sequence_parallel=true"],
    )
    assert run.train.learning_rate == 1e-3 and run.train.min_lr == 3e-5
    assert run.train.report_to == ("console", "jsonl")
    assert run.model.mixers == ["attention", "mamba1", "attention", "mamba1"]
    assert run.model.mamba.d_state == 8 and run.model.mamba.layout == "attention"
    assert run.parallel.tensor == 2 and run.parallel.sequence_parallel
    # dump → load gives the same config back
    again = tmp_path / "again.yaml"
    again.write_text(dump(run))
    assert load(Run, again) == run


@pytest.mark.parametrize(
    "overrides,match",
    [
        (["train.learning_rat=1"], r"unknown key\(s\) \['learning_rat'\] in train"),
        (["train.gradient_accumulation_steps=two"], "train.gradient_accumulation_steps='two'"),
        (["train.mixed_precision=fp8"], "train.mixed_precision='fp8' must be one of"),
        (["model.mamba.layout=fancy"], "model.mamba.layout='fancy' must be one of"),
        (["model.layer_pattern=AXAM"], "unknown symbol"),
        (["parallel.tensor=0"], "tensor-parallel size 0"),
        (["train.learning_rate"], "is not of the form key.sub=value"),
    ],
)
def test_bad_config_fails_with_the_path(tmp_path, overrides, match):
    path = tmp_path / "run.yaml"
    path.write_text(YAML)
    with pytest.raises(ConfigError, match=match):
        load(Run, path, overrides)


def test_missing_required_section_is_named():
    with pytest.raises(ConfigError, match="Run: .*model"):
        build(Run, {})


def test_missing_required_model_keys_are_listed():
    with pytest.raises(ConfigError, match=r"model: missing required key\(s\) \['num_layers'"):
        build(Run, {"model": {"arch": "llama"}})


def test_a_key_given_twice_is_refused_with_its_line(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text(YAML + "train:\n  min_lr: 1.0e-2\n")
    with pytest.raises(
        ConfigError, match=r"run.yaml, line 16: key 'train' is given twice \(first on line 12\)"
    ):
        load(Run, path)
    with pytest.raises(ConfigError, match="key 'a' is given twice"):
        load(Run, None, ["model={a: 1, a: 2}"])


def test_yaml_syntax_errors_name_the_file_and_line(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("train:\n  learning_rate: 1e-3\n  report_to: [console\n")
    with pytest.raises(ConfigError, match=r"broken.yaml, line 4: expected ',' or '\]'"):
        load(Run, path)
    with pytest.raises(ConfigError, match=r"override 'train.report_to=\[console': expected"):
        load(Run, None, ["train.report_to=[console"])


def test_an_empty_section_means_its_defaults(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text(YAML.replace("parallel: {tensor: 2}", "parallel:"))
    assert load(Run, path).parallel == ParallelConfig()
    assert load(Run, path, ["parallel.pipeline=2"]).parallel.pipeline == 2


@pytest.mark.parametrize(
    "override,match",
    [
        ("train.learning_rate=true", "train.learning_rate=True must be a number"),
        ("model.mamba.a_init_range=[1]", r"model.mamba.a_init_range=\[1\] must have 2 items"),
        ("model.mamba.a_init_range=[1, x]", r"model.mamba.a_init_range\[1\]='x' must be a number"),
    ],
)
def test_numbers_and_fixed_length_tuples_are_checked(tmp_path, override, match):
    path = tmp_path / "run.yaml"
    path.write_text(YAML)
    with pytest.raises(ConfigError, match=match):
        load(Run, path, [override])
