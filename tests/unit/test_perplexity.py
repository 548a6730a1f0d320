"""Held-out perplexity on an indexed dataset: the windows are the right slices of the token
stream, and the native model's loss over them is transformers' loss on the same windows."""

import json
import math

import numpy as np
import pytest
import torch
from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

from megatron_mamba.config import ParallelConfig
from megatron_mamba.convert.importer import import_hf
from megatron_mamba.data.held_out import HeldOutWindows
from megatron_mamba.data.indexed import DatasetError
from megatron_mamba.evaluation.perplexity import held_out_loss
from megatron_mamba.models.build import build_model
from megatron_mamba.models.presets import preset
from megatron_mamba.training.checkpoint import load_weights, read_model_config
from tests.helpers.hf_tiny import VOCAB, randomize_norms, tiny_gpt_neox


def _write(prefix, documents) -> str:
    builder = IndexedDatasetBuilder(f"{prefix}.bin", dtype=np.uint16)
    for document in documents:
        builder.add_document(np.asarray(document), [len(document)])
    builder.finalize(f"{prefix}.idx")
    return str(prefix)


def _documents(lengths, seed=0):
    generator = np.random.default_rng(seed)
    return [generator.integers(0, VOCAB, n) for n in lengths]


def test_documents_of_any_length_are_one_stream_of_overlapping_windows(tmp_path):
    documents = _documents([5, 17, 3, 30])
    windows = HeldOutWindows(_write(tmp_path / "d", documents), seq_length=8)
    stream = np.concatenate(documents)
    assert not windows.items and len(windows) == (len(stream) - 1) // 8
    for i in range(len(windows)):
        np.testing.assert_array_equal(windows[i], stream[8 * i : 8 * i + 9])
    predicted = np.concatenate([windows[i][1:] for i in range(len(windows))])
    np.testing.assert_array_equal(predicted, stream[1 : 1 + len(predicted)])  # each once


def test_fixed_length_items_are_taken_as_they_are(tmp_path):
    documents = _documents([9] * 6)
    windows = HeldOutWindows(_write(tmp_path / "d", documents), 8, first_window=2, max_windows=3)
    assert windows.items and len(windows) == 3
    for i in range(3):
        np.testing.assert_array_equal(windows[i], documents[2 + i])
    with pytest.raises(DatasetError, match="first_window=6"):
        HeldOutWindows(tmp_path / "d", 8, first_window=6)


def test_held_out_loss_is_transformers_loss_on_the_same_windows(runtime, tmp_path):
    hf = tiny_gpt_neox(True, layers=2)
    randomize_norms(hf)
    hf.save_pretrained(tmp_path / "hf")
    import_hf(tmp_path / "hf", tmp_path / "native", progress=False)
    config = read_model_config(tmp_path / "native")
    model = build_model(config, ParallelConfig())
    load_weights(tmp_path / "native" / "checkpoints" / "step_00000000", model)

    windows = HeldOutWindows(_write(tmp_path / "d", _documents([40, 23, 61, 12])), 16)
    got = held_out_loss(model, windows, VOCAB, 2, torch.device("cpu"), chunk=2)
    used = len(windows) // 2 * 2
    with torch.no_grad():
        batch = torch.from_numpy(np.stack([windows[i] for i in range(used)]))
        expected = hf(batch, labels=batch).loss.item()  # mean over the same predicted tokens
    assert got.windows == used and got.tokens == used * 16
    assert got.loss == pytest.approx(expected, rel=1e-5)
    assert got.perplexity == pytest.approx(math.exp(expected), rel=1e-5)
    assert model.training  # the mode is restored

    from eval.perplexity import main

    output = tmp_path / "ppl.json"
    main(
        ["--checkpoint", str(tmp_path / "native"), "--data", str(tmp_path / "d")]
        + ["--seq_length", "16", "--micro_batch", "2", "--output", str(output)]
    )
    assert json.loads(output.read_text())["loss"] == pytest.approx(expected, rel=1e-5)


def test_too_few_windows_for_a_micro_batch_is_refused(runtime, tmp_path):
    windows = HeldOutWindows(_write(tmp_path / "d", _documents([20])), 16)
    model = build_model(preset("tiny-gpt-neox", vocab_size=VOCAB), ParallelConfig())
    with pytest.raises(ValueError, match="fewer than micro_batch"):
        held_out_loss(model, windows, VOCAB, 2, torch.device("cpu"))


def test_a_micro_batch_below_one_is_refused(runtime, tmp_path):
    windows = HeldOutWindows(_write(tmp_path / "d", _documents([40])), 16)
    model = build_model(preset("tiny-gpt-neox", vocab_size=VOCAB), ParallelConfig())
    with pytest.raises(ValueError, match="micro_batch=0"):
        held_out_loss(model, windows, VOCAB, 0, torch.device("cpu"))


@pytest.mark.parametrize("option", ["--seq_length", "--micro_batch", "--max_windows"])
def test_perplexity_cli_refuses_sizes_below_one(option, capsys):
    """--max_windows 0 would read every window; --seq_length 0 would divide by zero."""
    from eval.perplexity import parse_args

    with pytest.raises(SystemExit):
        parse_args(["--checkpoint", "c", "--data", "d", option, "0"])
    assert f"{option}: 0 is not a positive integer" in capsys.readouterr().err
