"""Presets have the published shapes: parameter counts equal the released models' totals."""

import pytest

from megatron_mamba.config import ParallelConfig
from megatron_mamba.config_io import ConfigError
from megatron_mamba.models.build import build_model
from megatron_mamba.models.presets import PRESETS, preset, preset_fields
from megatron_mamba.models.size import parameter_count

PUBLISHED = {  # from the released checkpoints (transformers' num_parameters())
    "pythia-70m": 70_426_624,
    "pythia-160m": 162_322_944,
    "pythia-410m": 405_334_016,
    "pythia-1b": 1_011_781_632,
    "pythia-1.4b": 1_414_647_808,
    "pythia-2.8b": 2_775_208_960,
    "llama-3.2-1b": 1_235_814_400,
    "llama-3-8b": 8_030_261_248,
    "mistral-7b-v0.1": 7_241_732_096,
}


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_preset_parameter_count_is_published(name):
    assert parameter_count(preset(name)) == PUBLISHED[name]


@pytest.mark.parametrize("name", ["tiny-gpt-neox", "tiny-llama"])
def test_parameter_count_matches_the_built_model(runtime, name):
    config = preset(name)
    model = build_model(config, ParallelConfig())
    built = sum(p.numel() for p in model.parameters())
    assert built == parameter_count(config, vocab=config.padded_vocab_size(1))


def test_unknown_preset_is_named():
    with pytest.raises(
        ConfigError, match="preset='pythia-3b' is unknown; known presets: pythia-70m"
    ):
        preset("pythia-3b")


def test_preset_fields_merge_the_mamba_section(monkeypatch):
    monkeypatch.setitem(PRESETS, "hybrid", {**PRESETS["tiny-llama"], "mamba": {"d_state": 8}})
    fields = preset_fields("hybrid", {"mamba": {"d_conv": 2}, "num_layers": 3})
    assert fields["mamba"] == {"d_state": 8, "d_conv": 2} and fields["num_layers"] == 3
    assert PRESETS["hybrid"]["mamba"] == {"d_state": 8}
