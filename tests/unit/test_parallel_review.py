"""Loading whole tensors refuses another model's file by name; vocabulary padding may differ;
LOCAL_RANK must name a GPU."""

import pytest
import torch

from megatron_mamba.config import ParallelConfig
from megatron_mamba.models.build import build_model
from megatron_mamba.models.presets import preset
from megatron_mamba.parallel.shards import load_full_state, local_shards
from megatron_mamba.runtime import distributed


def _model(**overrides):
    return build_model(preset("tiny-llama", **overrides), ParallelConfig())


def _whole(model) -> dict[str, torch.Tensor]:
    return {k: v for k, (v, _) in local_shards(model).items()}


def test_a_file_with_more_layers_is_refused(runtime):
    deeper = _whole(_model(num_layers=3))
    with pytest.raises(ValueError, match=r"does not have, e\.g\. 'decoder\.layers\.2\."):
        load_full_state(_model(), deeper)


def test_an_untied_output_layer_is_not_dropped_by_a_tied_model(runtime):
    untied = _whole(_model(tie_embeddings=False))
    with pytest.raises(ValueError, match="'output_layer.weight'"):
        load_full_state(_model(tie_embeddings=True), untied)


def test_a_misshapen_tensor_is_refused_by_name_and_nothing_is_copied(runtime):
    model = _model()
    before = _whole(model)
    other = {k: torch.randn_like(v) for k, v in before.items()}
    key = "decoder.layers.1.input_layernorm.weight"
    other[key] = torch.ones(1)  # copy_ would broadcast it over the hidden size
    with pytest.raises(ValueError, match=rf"{key}.* shape \(1,\) .* needs \(64,\)"):
        load_full_state(model, other)
    for name, tensor in _whole(model).items():
        torch.testing.assert_close(tensor, before[name], rtol=0, atol=0, msg=name)


def test_a_wrong_width_is_refused_by_name(runtime):
    other = _whole(_model())
    key = "decoder.layers.0.mlp.linear_fc1.weight"
    other[key] = torch.cat([other[key], other[key]])
    with pytest.raises(ValueError, match=key):
        load_full_state(_model(), other)


@pytest.mark.parametrize("rows", [200, 512])
def test_vocabulary_rows_padded_for_another_tp_size_load(runtime, rows):
    """vocab 200 pads to 256 rows at TP=1, 512 at TP=4; an unpadded export has 200."""
    model = _model(vocab_size=200, tie_embeddings=False)
    whole = _whole(model)
    assert whole["output_layer.weight"].shape[0] == 256
    other = {k: torch.randn_like(v) for k, v in whole.items()}
    for key in ("embedding.word_embeddings.weight", "output_layer.weight"):
        other[key] = torch.randn(rows, 64)
    load_full_state(model, other)
    loaded = _whole(model)
    kept = min(rows, 256)
    for key in ("embedding.word_embeddings.weight", "output_layer.weight"):
        torch.testing.assert_close(loaded[key][:kept], other[key][:kept], rtol=0, atol=0)
        assert not loaded[key][kept:].any()


def test_vocabulary_rows_still_need_the_hidden_size(runtime):
    other = _whole(_model())
    other["embedding.word_embeddings.weight"] = torch.randn(256, 32)
    with pytest.raises(ValueError, match="'embedding.word_embeddings.weight' has shape"):
        load_full_state(_model(), other)


def _fake_gpus(monkeypatch, count: int) -> list[int]:
    chosen = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
    monkeypatch.setattr(torch.cuda, "set_device", chosen.append)
    return chosen


@pytest.mark.parametrize("local_rank", ["2", "-1", "one"])
def test_a_local_rank_beyond_the_gpus_is_named(monkeypatch, local_rank):
    chosen = _fake_gpus(monkeypatch, 2)
    monkeypatch.setenv("LOCAL_RANK", local_rank)
    with pytest.raises(RuntimeError, match=f"LOCAL_RANK='{local_rank}' names no GPU of the 2"):
        distributed.pick_device()
    assert chosen == []


def test_a_local_rank_picks_its_gpu(monkeypatch):
    chosen = _fake_gpus(monkeypatch, 2)
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert distributed.pick_device() == torch.device("cuda", 1)
    assert chosen == [1]


def test_vocabulary_rows_must_cover_the_real_vocabulary(runtime):
    """150 rows for a 200-token vocabulary would leave tokens 150…199 at zero."""
    model = _model(vocab_size=200, tie_embeddings=False)
    other = _whole(model)
    other["embedding.word_embeddings.weight"] = torch.randn(150, 64)
    with pytest.raises(ValueError, match="has 150 rows in the full state; the vocabulary has 200"):
        load_full_state(model, other)
