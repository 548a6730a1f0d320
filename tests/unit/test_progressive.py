"""Progressive distillation's step between stages: a native checkpoint gets more of its
attention layers swapped for Mamba; the Mamba layers it already has keep their trained weights."""

import pytest
import torch

from megatron_mamba.convert.importer import import_hf
from megatron_mamba.convert.layouts import split_qkv
from megatron_mamba.convert.native_files import parameter_layout, read_native, write_native
from megatron_mamba.convert.progressive import fraction_pattern, stepwise_order, stepwise_pattern
from megatron_mamba.convert.swap import swap_native
from megatron_mamba.models.mamba_dims import mamba1_dims
from megatron_mamba.training.checkpoint import read_model_config
from tests.helpers.hf_tiny import randomize_norms, tiny_llama
from tools import swap_layers

MAMBA = dict(layout="attention", init="attention")


@pytest.fixture
def stage1(runtime, tmp_path):
    """A 25%-Mamba stage-1 result whose Mamba mixer was trained (here: perturbed)."""
    hf = tiny_llama(layers=4)
    randomize_norms(hf)
    hf.save_pretrained(tmp_path / "hf")
    import_hf(tmp_path / "hf", tmp_path / "imported", "MAAA", mamba=MAMBA, progress=False)
    config = read_model_config(tmp_path / "imported")
    state = read_native(tmp_path / "imported", config)
    torch.manual_seed(0)
    for name in state:
        if name.startswith("decoder.layers.0.mixer."):
            state[name] = state[name] + 0.01 * torch.randn_like(state[name])
    write_native(tmp_path / "stage1", config, state, parameter_layout(config))
    return tmp_path / "stage1", config, state


def test_stage_two_carries_stage_one_mamba_and_swaps_from_attention(tmp_path, stage1):
    path, config, before = stage1
    target = swap_native(path, tmp_path / "stage2", "MAMA", mamba=MAMBA, seed=1)
    assert target.layer_pattern == "MAMA"
    after = read_native(tmp_path / "stage2", read_model_config(tmp_path / "stage2"))
    for name, tensor in before.items():
        if not name.startswith("decoder.layers.2.mixer."):
            torch.testing.assert_close(after[name], tensor, rtol=0, atol=0)  # layer 0 included
    q, k, v = split_qkv(before["decoder.layers.2.mixer.linear_qkv.weight"], config)
    x, z, B, C = after["decoder.layers.2.mixer.in_proj.weight"].split(
        list(mamba1_dims(target).in_proj_segments)
    )
    for got, expected in ((x, v), (B, k), (C, q)):
        torch.testing.assert_close(got, expected, rtol=0, atol=0)
    torch.testing.assert_close(
        after["decoder.layers.2.mixer.out_proj.weight"],
        before["decoder.layers.2.mixer.linear_proj.weight"],
        rtol=0,
        atol=0,
    )
    assert not any(n.startswith("decoder.layers.2.mixer.linear_qkv") for n in after)


def test_bad_patterns_are_refused(tmp_path, stage1, capsys):
    path = stage1[0]
    with pytest.raises(ValueError, match="layer 0 is mamba1 in the source"):
        swap_native(path, tmp_path / "out", "AAMA")
    with pytest.raises(ValueError, match="swaps no attention layer"):
        swap_native(path, tmp_path / "out", "MAAA")
    assert swap_layers.main([str(path), str(tmp_path / "out"), "--layer-pattern", "MAM"]) == 1
    assert "layer pattern 'MAM' has 3 layers; the model has 4" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("change", [dict(conv_bias=False), dict(d_state=8)])
def test_settings_that_reshape_the_kept_mamba_layers_are_refused(tmp_path, stage1, change):
    # conv_bias=false silently dropped layer 0's trained conv bias; d_state=8 wrote a
    # checkpoint that only failed when loaded
    with pytest.raises(ValueError, match=r"do not fit the Mamba layers .* already has"):
        swap_native(stage1[0], tmp_path / "out", "MAMA", mamba={**MAMBA, **change})
    assert not list(tmp_path.glob("out*"))


def _mamba_layers(pattern):
    return [i for i, s in enumerate(pattern) if s != "A"]


def test_patterns_are_mamba_in_llamas():
    # mamba_zephyr/zephyr_0.25_mamba.yaml … zephyr_0.875_mamba_sft.yaml (ssm_layers)
    assert _mamba_layers(fraction_pattern(32, 0.25)) == list(range(0, 32, 4))
    assert _mamba_layers(fraction_pattern(32, 0.5)) == list(range(0, 32, 2))
    assert _mamba_layers(fraction_pattern(32, 0.75)) == [i for i in range(32) if i % 4 != 3]
    assert _mamba_layers(fraction_pattern(32, 0.875, "S")) == [i for i in range(32) if i % 8 != 7]
    assert set(fraction_pattern(8, 0.875, "S")) == {"S", "A"}
    # mamba2_llama_stepwise/llama3_3_mamba2.yaml and llama3_17_mamba2.yaml
    assert _mamba_layers(stepwise_pattern(32, 3)) == [0, 2, 4]
    assert _mamba_layers(stepwise_pattern(32, 17)) == [0, 1, *range(2, 32, 2)]
    # ... whose later stages pass through the fractions' patterns (its zephyr_* configs)
    assert stepwise_pattern(32, 24) == fraction_pattern(32, 0.75)
    assert stepwise_pattern(32, 28) == fraction_pattern(32, 0.875)
    assert sorted(stepwise_order(32)) == list(range(32))
    stages = [fraction_pattern(32, f) for f in (0.25, 0.5, 0.75, 0.875)]
    for before, after in zip(stages, stages[1:], strict=False):
        assert set(_mamba_layers(before)) < set(_mamba_layers(after))
    with pytest.raises(ValueError, match="do not split into groups of 8"):
        fraction_pattern(12, 0.875)
    with pytest.raises(ValueError, match="not one of MambaInLlama's"):
        fraction_pattern(32, 0.3)


@pytest.mark.parametrize("layers", [0, -4])
def test_no_layers_is_refused(layers, capsys):
    from megatron_mamba.convert import progressive

    with pytest.raises(ValueError, match=f"number of layers {layers} must be a positive"):
        fraction_pattern(layers, 0.5)  # printed an empty pattern
    with pytest.raises(ValueError, match=f"number of layers {layers} must be a positive"):
        stepwise_pattern(layers, 1)
    assert progressive.main(["--layers", str(layers), "--mamba-fraction", "0.5"]) == 1
    assert capsys.readouterr().out == ""
