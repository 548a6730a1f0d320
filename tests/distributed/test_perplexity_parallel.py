"""Held-out perplexity of one checkpoint is the same at TP=2, PP=2 and DP=2 as in one process,
and the trainer's periodic validation is that same number for the checkpoint it saved."""

import json

import numpy as np
import pytest
from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

from tests.distributed.launch import REPO, run_script, torchrun
from tests.distributed.train_runs import ITEM, run, write_items
from tests.helpers.hf_tiny import randomize_norms, tiny_gpt_neox

PERPLEXITY = REPO / "eval" / "perplexity.py"
VOCAB = 100


@pytest.fixture(scope="module")
def hybrid(tmp_path_factory):
    """A tiny Pythia-shaped hybrid checkpoint and a held-out set of uneven documents."""
    root = tmp_path_factory.mktemp("ppl")
    model = tiny_gpt_neox(True, layers=4, vocab=VOCAB)
    randomize_norms(model)
    model.save_pretrained(root / "hf")
    mamba = ["--mamba=layout=classic", "--mamba=head_dim=16", "--mamba=groups=2"]
    run_script(
        REPO / "tools" / "convert_hf_to_native.py",
        root / "hf",
        root / "native",
        "--layer-pattern",
        "AMSA",
        *mamba,
    )
    builder = IndexedDatasetBuilder(f"{root / 'held_out'}.bin", dtype=np.uint16)
    generator = np.random.default_rng(0)
    for length in (50, 13, 77, 31, 64):
        builder.add_document(generator.integers(0, VOCAB, length), [length])
    builder.finalize(f"{root / 'held_out'}.idx")
    return root


@pytest.fixture(scope="module")
def single(hybrid):
    return _perplexity(hybrid, 1)


def _perplexity(root, nproc: int, *layout: str) -> dict:
    out = root / f"ppl-{nproc}-{'-'.join(layout)}.json"
    torchrun(
        PERPLEXITY,
        nproc,
        "--checkpoint",
        str(root / "native"),
        "--data",
        str(root / "held_out"),
        "--seq_length",
        "16",
        "--micro_batch",
        "2",
        "--max_windows",
        "12",
        "--output",
        str(out),
        *layout,
    )
    return json.loads(out.read_text())


@pytest.mark.parametrize(
    "layout", [("--tensor", "2"), ("--pipeline", "2"), ()], ids=["tp2", "pp2", "dp2"]
)
def test_parallel_layouts_give_the_single_process_perplexity(hybrid, single, layout):
    parallel = _perplexity(hybrid, 2, *layout)
    assert single["tokens"] == parallel["tokens"] == 12 * 16
    assert parallel["loss"] == pytest.approx(single["loss"], rel=1e-5)


def test_periodic_validation_is_the_perplexity_of_the_saved_checkpoint(tmp_path):
    data = write_items(tmp_path / "train")
    held_out = write_items(tmp_path / "held_out", count=16)
    records = run(
        tmp_path,
        data,
        "validated",
        **{"data.valid_path": str(held_out), "data.valid_windows": 8, "train.eval_interval": 4},
    )
    validated = [r for r in records if "valid_loss" in r]
    assert [r["step"] for r in validated] == [4, 8]
    assert validated[1]["valid_loss"] < validated[0]["valid_loss"]  # it learns the pattern
    out = tmp_path / "ppl.json"
    torchrun(
        PERPLEXITY,
        1,
        "--checkpoint",
        str(tmp_path / "validated"),
        "--data",
        str(held_out),
        "--seq_length",
        str(ITEM - 1),
        "--micro_batch",
        "4",
        "--max_windows",
        "8",
        "--output",
        str(out),
    )
    assert json.loads(out.read_text())["loss"] == pytest.approx(
        validated[1]["valid_loss"], rel=1e-5
    )
