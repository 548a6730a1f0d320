"""The conversion command lines: a round trip, and one clear error with exit 1 on bad input."""

import torch
from transformers import AutoModelForCausalLM

import megatron_mamba.hf  # noqa: F401  (registers the hybrid classes with transformers' Auto*)
from tests.helpers.hf_tiny import tiny_gpt_neox
from tools import convert_hf_to_native, convert_native_to_hf


def test_round_trip_through_the_command_lines(runtime, tmp_path, capsys):
    hf = tiny_gpt_neox(True, layers=2)
    hf.save_pretrained(tmp_path / "hf")
    argv = [str(tmp_path / "hf"), str(tmp_path / "native"), "--layer-pattern", "MA"]
    assert convert_hf_to_native.main([*argv, "--mamba", "layout=classic"]) == 0
    assert convert_native_to_hf.main([str(tmp_path / "native"), str(tmp_path / "out")]) == 0
    out = AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    assert out.config.layer_pattern == "MA"
    assert torch.equal(
        out.gpt_neox.layers[1].mlp.dense_h_to_4h.weight,
        hf.gpt_neox.layers[1].mlp.dense_h_to_4h.weight,
    )

    assert convert_native_to_hf.main([str(tmp_path / "native"), str(tmp_path / "out")]) == 1
    assert "already exists; pass --overwrite" in capsys.readouterr().err
    assert convert_hf_to_native.main([*argv, "--overwrite", "--tensor-parallel", "3"]) == 1
    assert "tensor-parallel size 3" in capsys.readouterr().err
    assert convert_native_to_hf.main([str(tmp_path / "hf"), str(tmp_path / "x")]) == 1
    assert "not a complete checkpoint" in capsys.readouterr().err
    assert not (tmp_path / "x").exists() and not (tmp_path / "x.partial").exists()
