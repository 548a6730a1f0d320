"""The data_tools command lines: results on good input, one clear error and exit 1 on bad."""

import json

import numpy as np
import pytest

from data_tools import inspect_data, merge_pythia_shards, preprocess_data, pythia_batch_viewer
from tests.helpers.tiny_tokenizer import corpus_lines, make_tokenizer
from tests.unit.test_data import build_pair


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    return make_tokenizer(tmp_path_factory.mktemp("tokenizer"))


def test_preprocess_then_inspect(tmp_path, tokenizer_dir, capsys):
    source = tmp_path / "in.jsonl"
    source.write_text("".join(json.dumps({"text": t}) + "\n" for t in corpus_lines()))
    prefix = str(tmp_path / "out")
    argv = ["--input", str(source), "--tokenizer", str(tokenizer_dir), "--output-prefix", prefix]
    assert preprocess_data.main(argv) == 0
    assert "8 documents" in capsys.readouterr().out
    argv = [prefix, "--tokenizer", str(tokenizer_dir), "--vocab-size", "300"]
    assert inspect_data.main(argv) == 0
    out = capsys.readouterr().out
    assert "8 sequences (8 readable), 8 documents" in out and "dtype uint16" in out
    assert corpus_lines()[0] in out  # the decoded sample


def test_bad_inputs_exit_1_with_one_line(tmp_path, tokenizer_dir, capsys):
    prefix = str(tmp_path / "out")
    missing = ["--input", str(tmp_path / "nope.jsonl"), "--tokenizer", str(tokenizer_dir)]
    assert preprocess_data.main([*missing, "--output-prefix", prefix]) == 1
    expected = f"error: input file {tmp_path / 'nope.jsonl'} does not exist\n"
    assert capsys.readouterr().err == expected
    assert inspect_data.main([str(tmp_path / "absent")]) == 1
    assert "index file" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def test_pythia_viewer_and_merge(tmp_path, capsys):
    items = [np.full(2049, i) for i in range(6)]
    prefix = build_pair(tmp_path / "document", items)
    assert pythia_batch_viewer.main([str(prefix), "--step", "1", "--global-batch", "2"]) == 0
    assert capsys.readouterr().out.splitlines()[0].startswith("step 1 item 2: [2, 2")
    whole = (tmp_path / "document.bin").read_bytes()
    (tmp_path / "a.bin").write_bytes(whole[:5000])
    (tmp_path / "b.bin").write_bytes(whole[5000:])
    shards = [str(tmp_path / "a.bin"), str(tmp_path / "b.bin")]
    idx = str(tmp_path / "document.idx")
    argv = ["--shards", *shards, "--index", idx, "--output-prefix", str(tmp_path / "m")]
    assert merge_pythia_shards.main(argv) == 0
    assert (tmp_path / "m.bin").read_bytes() == whole
    assert merge_pythia_shards.main([*argv[:2], "--index", idx, "--output-prefix", "x"]) == 1
    assert "truncated" in capsys.readouterr().err


def test_merge_datasets_concatenates_pairs_in_order(tmp_path, capsys):
    from data_tools import merge_datasets
    from megatron_mamba.data.indexed import open_indexed

    a = build_pair(tmp_path / "a", [np.arange(3), np.arange(5)])
    b = build_pair(tmp_path / "b", [np.arange(7)])
    out = tmp_path / "ab"
    assert merge_datasets.main(["--inputs", str(a), str(b), "--output-prefix", str(out)]) == 0
    dataset, summary = open_indexed(out)
    assert [len(dataset[i]) for i in range(3)] == [3, 5, 7] and summary.documents == 3
    c = build_pair(tmp_path / "c", [np.arange(4)], dtype=np.int32)
    argv = ["--inputs", str(a), str(c), "--output-prefix", str(tmp_path / "bad")]
    assert merge_datasets.main(argv) == 1
    assert "different token dtypes" in capsys.readouterr().err
    assert not list(tmp_path.glob("bad*"))


def _one_error(capsys, code: int, expected: str) -> None:
    assert code == 1
    captured = capsys.readouterr()
    last = captured.err.splitlines()[-1]  # after any progress bar
    assert last.startswith("error: ") and expected in last, captured.err
    assert "Traceback" not in captured.err and not captured.out


def test_more_bad_inputs_exit_1_with_one_line(tmp_path, tokenizer_dir, capsys):
    prefix = str(build_pair(tmp_path / "document", [np.full(2049, i) for i in range(4)]))
    missing = str(tmp_path / "no-tokenizer")
    viewer = [prefix, "--step", "0"]
    _one_error(capsys, pythia_batch_viewer.main([*viewer, "--global-batch", "0"]), "global batch 0")
    _one_error(capsys, pythia_batch_viewer.main([*viewer, "--step", "-1"]), "--step -1")
    _one_error(capsys, pythia_batch_viewer.main([*viewer, "--rows", "0"]), "--rows 0 must be at")
    _one_error(capsys, pythia_batch_viewer.main([*viewer, "--tokenizer", missing]), missing)
    _one_error(capsys, inspect_data.main([prefix, "--tokenizer", missing]), missing)
    afile = str(tokenizer_dir / "tokenizer.json")
    _one_error(capsys, inspect_data.main([prefix, "--tokenizer", afile]), f"{afile} is a file")
    source = tmp_path / "in.jsonl"
    source.write_text('{"text": "fine"}\n{"text": 5}\n')
    out = str(tmp_path / "out")
    argv = ["--input", str(source), "--tokenizer", str(tokenizer_dir), "--output-prefix", out]
    _one_error(capsys, preprocess_data.main(argv), f"{source}:2 has 'text' of type int")
    _one_error(capsys, preprocess_data.main([*argv, "--workers", "0"]), "workers=0 must be at")
    argv[1] = str(tmp_path)
    _one_error(capsys, preprocess_data.main(argv), f"input {tmp_path} is a directory; expected")


def test_outputs_are_replaced_only_with_overwrite(tmp_path, tokenizer_dir, capsys):
    from data_tools import merge_datasets

    source = tmp_path / "in.jsonl"
    source.write_text("".join(json.dumps({"text": t}) + "\n" for t in corpus_lines()[:3]))
    out = str(tmp_path / "out")
    argv = ["--input", str(source), "--tokenizer", str(tokenizer_dir), "--output-prefix", out]
    assert preprocess_data.main(argv) == 0
    capsys.readouterr()
    _one_error(capsys, preprocess_data.main(argv), "already exist; pass --overwrite")
    assert preprocess_data.main([*argv, "--overwrite"]) == 0
    capsys.readouterr()
    merge = ["--inputs", out, out, "--output-prefix", str(tmp_path / "both")]
    assert merge_datasets.main(merge) == 0
    capsys.readouterr()
    _one_error(capsys, merge_datasets.main(merge), "already exist; pass --overwrite")
    assert merge_datasets.main([*merge, "--overwrite"]) == 0
    capsys.readouterr()
    shards = ["--shards", f"{out}.bin", "--index", f"{out}.idx"]
    merge = [*shards, "--output-prefix", str(tmp_path / "both")]
    _one_error(capsys, merge_pythia_shards.main(merge), "already exist; pass --overwrite")
    assert merge_pythia_shards.main([*merge, "--overwrite"]) == 0
    capsys.readouterr()


def test_pythia_shards_merge_next_to_their_index(tmp_path):
    """The documented command: shards merged into document.bin beside the Pile's document.idx,
    which is the output's index already, not an existing output to refuse or replace."""
    build_pair(tmp_path / "full", [np.full(2049, i) for i in range(4)])
    whole = (tmp_path / "full.bin").read_bytes()
    index = (tmp_path / "full.idx").rename(tmp_path / "document.idx")
    shards = [tmp_path / "document-00000-of-00001.bin", tmp_path / "document-00001-of-00001.bin"]
    shards[0].write_bytes(whole[:5000])
    shards[1].write_bytes(whole[5000:])
    original = index.read_bytes()
    argv = ["--shards", *map(str, shards), "--index", str(index)]
    assert merge_pythia_shards.main([*argv, "--output-prefix", str(tmp_path / "document")]) == 0
    assert (tmp_path / "document.bin").read_bytes() == whole
    assert index.read_bytes() == original
    assert not list(tmp_path.glob("*tmp*"))


def test_a_pairs_bin_or_idx_file_stands_for_its_prefix_and_a_directory_is_refused(
    tmp_path, tokenizer_dir, capsys
):
    from data_tools import merge_datasets
    from megatron_mamba.data.indexed import open_indexed
    from megatron_mamba.training.run_config import DataConfig

    source = tmp_path / "in.jsonl"
    source.write_text("".join(json.dumps({"text": t}) + "\n" for t in corpus_lines()[:3]))
    tools = ["--input", str(source), "--tokenizer", str(tokenizer_dir), "--output-prefix"]
    assert preprocess_data.main([*tools, str(tmp_path / "c.bin")]) == 0
    assert "→ " + str(tmp_path / "c") + ".bin/.idx" in capsys.readouterr().out
    assert sorted(p.name for p in tmp_path.glob("c*")) == ["c.bin", "c.idx"]
    merged = tmp_path / "cc.idx"
    inputs = [str(tmp_path / "c.bin"), str(tmp_path / "c.idx")]
    assert merge_datasets.main(["--inputs", *inputs, "--output-prefix", str(merged)]) == 0
    assert capsys.readouterr().out.endswith(f"→ {tmp_path / 'cc'}.bin/.idx\n")
    assert open_indexed(tmp_path / "cc")[1].documents == 6
    for directory in (f"{tmp_path}/", str(tmp_path), f"{tmp_path}/.bin"):
        code = preprocess_data.main([*tools, directory])
        _one_error(capsys, code, f"output prefix {directory} names a directory")
    assert not list(tmp_path.glob(".*"))
    corpus = DataConfig(kind="corpus", path=f"0.5 {tmp_path}/c.bin 0.5 {merged}", tokenizer="t")
    assert corpus.path == f"0.5 {tmp_path}/c 0.5 {tmp_path}/cc"
    assert DataConfig(path=f"{tmp_path}/c.idx", valid_path=str(merged)).valid_path.endswith("cc")
