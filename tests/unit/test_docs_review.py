"""CLI defects found by following the docs as a new user: each test failed before its fix."""

import numpy as np
import pytest

from data_tools import inspect_data, pythia_batch_viewer
from tests.unit.test_data import build_pair


def _error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    return err


def test_perplexity_missing_checkpoint_or_data_is_one_line(tmp_path, capsys):
    from eval.perplexity import main

    data = build_pair(tmp_path / "held_out", [np.arange(40)])
    assert main(["--checkpoint", str(tmp_path / "nope"), "--data", str(data)]) == 1
    assert f"checkpoint {tmp_path / 'nope'} does not exist" in _error_line(capsys)
    assert main(["--checkpoint", str(tmp_path / "nope"), "--data", str(tmp_path / "absent")]) == 1
    assert "absent.idx does not exist" in _error_line(capsys)


def test_perplexity_accepts_the_bin_file_as_data(tmp_path, capsys):
    from eval.perplexity import main

    data = build_pair(tmp_path / "held_out", [np.arange(40)])
    assert main(["--checkpoint", str(tmp_path / "nope"), "--data", f"{data}.bin"]) == 1
    assert "nope does not exist" in _error_line(capsys)  # the data passed its check


def test_data_tools_accept_the_bin_or_idx_file(tmp_path, capsys):
    prefix = build_pair(tmp_path / "document", [np.full(65, i) for i in range(8)])
    assert inspect_data.main([f"{prefix}.bin"]) == 0
    assert inspect_data.main([f"{prefix}.idx"]) == 0
    viewer = [f"{prefix}.bin", "--step", "1", "--global-batch", "4", "--rows", "1"]
    assert pythia_batch_viewer.main([*viewer, "--item-length", "65"]) == 0
    assert capsys.readouterr().out.splitlines()[-1].startswith("step 1 item 4: [4, 4")


def test_pythia_viewer_refuses_other_item_lengths_by_default(tmp_path, capsys):
    prefix = build_pair(tmp_path / "document", [np.full(65, i) for i in range(8)])
    assert pythia_batch_viewer.main([str(prefix), "--step", "0", "--global-batch", "4"]) == 1
    assert "2049" in _error_line(capsys)


@pytest.mark.parametrize(
    "module, words",
    [
        ("tools.convert_hf_to_native", "as a native checkpoint"),
        ("tools.convert_native_to_hf", "our hybrid classes"),
        ("data_tools.pythia_batch_viewer", "pre-shuffled Pile"),
        ("eval.perplexity", "at any TP/PP"),
    ],
)
def test_help_descriptions_are_whole_sentences(module, words, capsys):
    import importlib

    cli = importlib.import_module(module)
    entry = getattr(cli, "main", None)
    with pytest.raises(SystemExit):
        (cli.parse_args if hasattr(cli, "parse_args") else entry)(["--help"])
    assert words in " ".join(capsys.readouterr().out.split())
