"""Conversion refusals: what the native model cannot hold or compute is refused with one clear
error naming the value, and nothing is written; outputs are replaced only when allowed."""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from megatron_mamba.convert.exporter import export_hf
from megatron_mamba.convert.hf_files import CheckpointFilesError
from megatron_mamba.convert.importer import import_hf
from megatron_mamba.convert.mapping import MappingError
from tests.helpers.conversion import (
    assert_relative,
    edit_config,
    native_logits,
    native_model,
    refused,
    sample_tokens,
    saved,
)
from tests.helpers.hf_tiny import tiny_gpt_neox, tiny_llama

# Refusals: one clear error, nothing written.


def test_refuses_an_existing_output_unless_overwrite(runtime, tmp_path):
    saved("llama_tied", tmp_path / "hf")
    (tmp_path / "native").mkdir()
    with pytest.raises(FileExistsError, match="already exists; pass --overwrite"):
        import_hf(tmp_path / "hf", tmp_path / "native", progress=False)
    import_hf(tmp_path / "hf", tmp_path / "native", overwrite=True, progress=False)
    assert (tmp_path / "native" / "checkpoints" / "latest").is_file()


def test_refuses_an_unknown_architecture(runtime, tmp_path):
    saved("llama_tied", tmp_path / "hf")
    edit_config(tmp_path / "hf", model_type="gpt2")
    refused(tmp_path / "hf", ValueError, "model_type 'gpt2' is unsupported", tmp_path / "native")


def test_refuses_a_config_that_does_not_match_the_weights(runtime, tmp_path):
    saved("llama_tied", tmp_path / "hf")
    edit_config(tmp_path / "hf", num_hidden_layers=2)
    refused(tmp_path / "hf", MappingError, "config does not match the weights", tmp_path / "native")
    edit_config(tmp_path / "hf", num_hidden_layers=3, intermediate_size=96)
    shapes = r"linear_fc1.weight. has shape \(256, 64\).*expects \(192, 64\)"
    refused(tmp_path / "hf", MappingError, shapes, tmp_path / "native")


@pytest.mark.parametrize("rows", [150, 250])
def test_refuses_an_embedding_that_is_not_the_vocabulary(runtime, tmp_path, rows):
    # 150 rows left tokens 150…199 at zero; 250 rows (within the padding) lost 50 on export
    saved("llama_tied", tmp_path / "hf")
    weights = load_file(tmp_path / "hf" / "model.safetensors")
    embedding = weights["model.embed_tokens.weight"]
    weights["model.embed_tokens.weight"] = torch.randn(rows, embedding.shape[1])
    save_file(weights, tmp_path / "hf" / "model.safetensors", metadata={"format": "pt"})
    rows_message = f"embed_tokens.weight .*{rows} rows .*vocab_size=200"
    refused(tmp_path / "hf", MappingError, rows_message, tmp_path / "native")


def test_refuses_key_value_heads_that_do_not_match_the_weights(runtime, tmp_path):
    # was a bare RuntimeError from a reshape (a traceback from the command line)
    saved("mistral", tmp_path / "hf")
    edit_config(tmp_path / "hf", num_key_value_heads=4)
    heads = r"k_proj.weight \(32, 64\).*num_query_groups=4"
    refused(tmp_path / "hf", MappingError, heads, tmp_path / "native")


def test_a_tied_checkpoint_may_also_hold_its_output_layer(runtime, tmp_path):
    # pytorch_model.bin saves of tied models keep lm_head.weight; it was refused as unknown
    hf = saved("llama_tied", tmp_path / "hf")
    weights = load_file(tmp_path / "hf" / "model.safetensors")
    weights["lm_head.weight"] = weights["model.embed_tokens.weight"].clone()
    save_file(weights, tmp_path / "hf" / "model.safetensors", metadata={"format": "pt"})
    import_hf(tmp_path / "hf", tmp_path / "native", progress=False)
    ours, _ = native_model(tmp_path / "native")
    with torch.no_grad():
        expected = hf(sample_tokens()).logits
    assert_relative(native_logits(ours, sample_tokens()), expected, 1e-5)
    weights["lm_head.weight"] = weights["lm_head.weight"] + 1.0
    save_file(weights, tmp_path / "hf" / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(MappingError, match="tie_word_embeddings=true but its lm_head.weight"):
        import_hf(tmp_path / "hf", tmp_path / "again", progress=False)
    assert not list(tmp_path.glob("again*"))


def test_refuses_a_missing_shard(runtime, tmp_path):
    saved("llama_tied", tmp_path / "hf", max_shard_size="40KB")
    shard = sorted((tmp_path / "hf").glob("model-*.safetensors"))[1]
    shard.unlink()
    with pytest.raises(CheckpointFilesError, match=f"missing shard.*{shard.name}"):
        import_hf(tmp_path / "hf", tmp_path / "native", progress=False)


def test_refuses_turning_mamba_back_into_attention(runtime, tmp_path):
    saved("llama_tied", tmp_path / "hf")
    import_hf(
        tmp_path / "hf",
        tmp_path / "native",
        layer_pattern="MAA",
        mamba=dict(layout="attention"),
        progress=False,
    )
    export_hf(tmp_path / "native", tmp_path / "export", progress=False)
    with pytest.raises(ValueError, match="layer 0 is mamba1 in the source checkpoint"):
        import_hf(tmp_path / "export", tmp_path / "again", layer_pattern="AAA", progress=False)


def test_refuses_mamba_settings_that_reshape_the_sources_mamba_layers(runtime, tmp_path):
    """A MambaInLlama-layout source keeps its Mamba layers: a d_state of another size failed
    only once its tensors were read ('has shape (64, 16) ... expects (64, 8)')."""
    saved("llama_tied", tmp_path / "hf")
    mamba = dict(layout="attention")
    import_hf(tmp_path / "hf", tmp_path / "native", "MAA", mamba=mamba, progress=False)
    export_hf(tmp_path / "native", tmp_path / "export", progress=False)
    with pytest.raises(ValueError, match=r"the Mamba settings \{'d_state': 8\} do not fit the "):
        import_hf(tmp_path / "export", tmp_path / "again", "MMA", {"d_state": 8}, progress=False)
    assert not list(tmp_path.glob("again*"))
    import_hf(tmp_path / "export", tmp_path / "again", "MMA", {"init": "fresh"}, progress=False)


# What the native model cannot compute is refused, naming the value.


@pytest.mark.parametrize(
    "factory, act, expected",
    [
        (lambda: tiny_gpt_neox(), "relu", "gelu"),
        (lambda: tiny_gpt_neox(), "gelu_new", "gelu"),
        (lambda: tiny_llama(), "gelu", "silu"),
    ],
)
def test_refuses_an_activation_the_native_model_does_not_compute(
    runtime, tmp_path, factory, act, expected
):
    model = factory()
    model.config.hidden_act = act
    model.save_pretrained(tmp_path / "hf")
    with pytest.raises(
        ValueError, match=f"hidden_act='{act}' is unsupported; expected '{expected}'"
    ):
        import_hf(tmp_path / "hf", tmp_path / "native", progress=False)
    assert not list(tmp_path.glob("native*"))


@pytest.mark.parametrize("rope_type", ["linear", "dynamic"])
def test_refuses_gpt_neox_rope_scaling(runtime, tmp_path, rope_type):
    model = tiny_gpt_neox()
    model.save_pretrained(tmp_path / "hf")
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    config["rope_parameters"] = {**config["rope_parameters"], "rope_type": rope_type, "factor": 4.0}
    (tmp_path / "hf" / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=f"RoPE scaling type '{rope_type}' is unsupported"):
        import_hf(tmp_path / "hf", tmp_path / "native", progress=False)
    assert not list(tmp_path.glob("native*"))


# Outputs: refused unless replaceable, never left half-written.


def test_export_refuses_a_missing_or_empty_tokenizer_directory(runtime, tmp_path):
    saved("llama_tied", tmp_path / "hf")
    import_hf(tmp_path / "hf", tmp_path / "native", progress=False)
    with pytest.raises(FileNotFoundError, match="tokenizer directory .*nope does not exist"):
        export_hf(tmp_path / "native", tmp_path / "out", tokenizer=tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="empty holds no tokenizer files"):
        export_hf(tmp_path / "native", tmp_path / "out", tokenizer=tmp_path / "empty")
    assert not list(tmp_path.glob("out*"))


def test_a_regular_file_is_never_replaced(runtime, tmp_path):
    saved("llama_tied", tmp_path / "hf")
    import_hf(tmp_path / "hf", tmp_path / "native", progress=False)
    (tmp_path / "afile").write_text("x")
    for convert in (
        lambda: import_hf(tmp_path / "hf", tmp_path / "afile", overwrite=True, progress=False),
        lambda: export_hf(tmp_path / "native", tmp_path / "afile", overwrite=True, progress=False),
    ):
        with pytest.raises(FileExistsError, match="afile exists and is not a directory"):
            convert()
        assert (tmp_path / "afile").read_text() == "x"
        assert not list(tmp_path.glob("afile.*"))


def test_a_failed_replacement_keeps_the_old_output_and_leaves_nothing_partial(
    runtime, tmp_path, monkeypatch
):
    import os

    saved("llama_tied", tmp_path / "hf")
    import_hf(tmp_path / "hf", tmp_path / "native", progress=False)
    export_hf(tmp_path / "native", tmp_path / "out", progress=False)
    before = sorted(p.name for p in (tmp_path / "out").iterdir())
    replace = os.replace

    def failing(src, dst):
        if str(src).endswith(".partial"):
            raise OSError(f"cannot rename {src}")
        replace(src, dst)

    monkeypatch.setattr(os, "replace", failing)
    with pytest.raises(OSError, match="cannot rename"):
        export_hf(tmp_path / "native", tmp_path / "out", overwrite=True, progress=False)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf", "native", "out"]
