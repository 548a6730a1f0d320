"""Bad model or layout input stops before any weight is built, with one sentence naming it."""

import pytest

from megatron_mamba.config import ModelConfig, ParallelConfig
from megatron_mamba.models import build as build_module
from megatron_mamba.models.build import build_model, stage_layer_counts
from megatron_mamba.models.presets import preset


@pytest.fixture
def no_weights(monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("a model was built despite invalid input")

    monkeypatch.setattr(build_module, "LanguageModel", fail)


def test_pattern_of_wrong_length():
    with pytest.raises(ValueError, match="has 3 layers; the model has 2"):
        preset("tiny-llama", layer_pattern="AAA")


def test_pattern_with_unknown_symbol():
    with pytest.raises(ValueError, match=r"unknown symbol\(s\) X"):
        preset("tiny-llama", layer_pattern="AX")


def test_pattern_accepts_names_and_grouping():
    assert preset("tiny-llama", layer_pattern=["attention", "mamba1"]).layer_pattern == "AM"
    assert preset("pythia-70m", layer_pattern="AMS|AMS").mixers[:3] == [
        "attention",
        "mamba1",
        "mamba2",
    ]


@pytest.mark.parametrize(
    "overrides,tp,message",
    [
        ({}, 3, "does not divide num_attention_heads=4"),
        (
            {"num_attention_heads": 8, "num_query_groups": 2},
            4,
            "does not divide num_query_groups=2",
        ),
    ],
)
def test_tensor_parallel_must_divide_heads_and_groups(runtime, no_weights, overrides, tp, message):
    config = preset("tiny-llama", **overrides)
    with pytest.raises(ValueError, match=message):
        build_model(config, ParallelConfig(tensor=tp))


def test_pipeline_stage_left_empty(runtime, no_weights):
    config = preset("tiny-gpt-neox", num_layers=4)
    with pytest.raises(ValueError, match="leaves a stage with no layer"):
        build_model(config, ParallelConfig(pipeline=2, first_stage_layers=4))
    with pytest.raises(ValueError, match="do not split evenly"):
        build_model(config, ParallelConfig(pipeline=3))


def test_uneven_pipeline_split():
    config = preset("tiny-gpt-neox", num_layers=10)
    parallel = ParallelConfig(pipeline=4, first_stage_layers=1, last_stage_layers=3)
    assert stage_layer_counts(config, parallel) == [1, 3, 3, 3]


def test_sequence_parallel_needs_tensor_parallel():
    with pytest.raises(ValueError, match="sequence_parallel=True needs tensor-parallel size > 1"):
        ParallelConfig(sequence_parallel=True)


def test_unknown_arch_and_bad_sizes():
    with pytest.raises(ValueError, match="arch 'gpt2' is unknown"):
        ModelConfig(
            arch="gpt2",
            num_layers=1,
            hidden_size=8,
            num_attention_heads=2,
            ffn_hidden_size=8,
            vocab_size=8,
        )
    with pytest.raises(ValueError, match="num_attention_heads=6 is not a multiple"):
        preset("tiny-llama", num_attention_heads=6, num_query_groups=4, head_dim=16)


@pytest.mark.parametrize(
    "overrides,message",
    [
        ({"num_query_groups": 0}, "num_query_groups=0 must be a positive integer"),
        ({"vocab_size": 0}, "vocab_size=0 must be a positive integer"),
        ({"vocab_size": -5}, "vocab_size=-5 must be a positive integer"),
        ({"head_dim": 0}, "head_dim=0 must be a positive integer"),
        ({"max_position_embeddings": 0}, "max_position_embeddings=0 must be a positive"),
        ({"make_vocab_size_divisible_by": 0}, "make_vocab_size_divisible_by=0 must be a positive"),
        ({"sliding_window": 0}, "sliding_window=0 must be a positive integer"),
        ({"rope_scaling_factor": 0.0}, "rope_scaling_factor=0.0 must be positive and finite"),
        ({"norm_eps": -1.0}, "norm_eps=-1.0 must be positive and finite"),
        ({"hidden_dropout": 1.5}, r"hidden_dropout=1.5 must be a probability in \[0, 1\)"),
        ({"attention_dropout": 1.0}, r"attention_dropout=1.0 must be a probability in \[0, 1\)"),
        ({"mamba": {"d_conv": 1}}, "mamba d_conv=1 must be 2, 3 or 4"),
        ({"mamba": {"d_conv": 6}}, "mamba d_conv=6 must be 2, 3 or 4"),
        ({"mamba": {"norm_eps": 0.0}}, "mamba norm_eps=0.0 must be positive"),
    ],
)
def test_bad_model_values_fail_clearly(overrides, message):
    with pytest.raises(ValueError, match=message):
        preset("tiny-llama", **overrides)


def test_mamba_conv_widths_of_the_gpu_kernel_are_accepted():
    for width in (2, 3, 4):
        assert preset("tiny-llama", mamba={"d_conv": width}).mamba.d_conv == width


@pytest.mark.parametrize(
    "settings,message",
    [
        ({"first_stage_layers": 5}, "first_stage_layers=5 sizes a pipeline stage, but pipeline=1"),
        ({"last_stage_layers": 1}, "last_stage_layers=1 sizes a pipeline stage, but pipeline=1"),
        ({"pipeline": 2, "first_stage_layers": -3}, "first_stage_layers=-3 must be a positive"),
        ({"pipeline": 2, "last_stage_layers": 0}, "last_stage_layers=0 must be a positive"),
    ],
)
def test_stage_sizes_need_a_pipeline_and_positive_counts(settings, message):
    with pytest.raises(ValueError, match=message):
        ParallelConfig(**settings)


@pytest.mark.parametrize(
    "items,named",
    [(["attention", "mamba3"], "'mamba3'"), (["attention", 2], "2"), (["AM", "AM"], "'AM'")],
)
def test_pattern_list_names_its_bad_item(items, named):
    with pytest.raises(ValueError, match=f"layer pattern item {named} is unknown"):
        preset("tiny-llama", layer_pattern=items)


@pytest.mark.parametrize(
    "overrides,channels",
    [
        ({"rotary_percent": 0.3125}, 5),  # head_dim 16: one channel more would be rotated
        ({"rotary_percent": 0.05}, 0),  # no channel rotated: attention without positions
        ({"head_dim": 5, "rotary_percent": 1.0}, 5),  # failed at the first forward
    ],
)
def test_rotary_channels_must_be_a_positive_even_count(overrides, channels):
    with pytest.raises(ValueError, match=f"rotates {channels} channels; RoPE rotates channel"):
        preset("tiny-gpt-neox", **overrides)


def test_rotary_channels_do_not_matter_without_attention():
    assert preset("tiny-gpt-neox", rotary_percent=0.05, layer_pattern="MM").rotary_percent == 0.05


@pytest.mark.parametrize(
    "mamba,message",
    [
        ({"dt_scale": float("nan")}, "mamba dt_scale=nan must be finite and ≥ 0"),
        ({"dt_scale": -1.0}, "mamba dt_scale=-1.0 must be finite and ≥ 0"),
        ({"dt_init_floor": float("nan")}, "mamba dt_init_floor=nan must be finite"),
        ({"dt_max": float("inf")}, r"mamba dt range \(0.001, inf\) must be 0 < min ≤ max"),
        ({"a_init_range": (1.0, float("inf"))}, r"mamba a_init_range \(1.0, inf\) must be"),
        (
            {"layout": "attention", "d_inner": 128},
            "mamba d_inner=128 applies to layout 'classic' only",
        ),
    ],
)
def test_mamba_values_that_built_nan_or_ignored_weights_are_refused(mamba, message):
    with pytest.raises(ValueError, match=message):
        preset("tiny-llama", layer_pattern="MS", mamba=mamba)
