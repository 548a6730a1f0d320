"""Step-wise stage data: each stage takes its torch.chunk slice of every source (MambaInLlama's
train_hybrid_step.py), concatenated; bad requests fail by name and write nothing."""

import json

import pytest
import torch

from data_tools.stage_slice import main as stage_slice
from megatron_mamba.data.slices import chunk_bounds, write_stage_slice


@pytest.mark.parametrize("records,count", [(10, 4), (12, 4), (7, 7), (33, 32), (5, 1)])
def test_bounds_are_torch_chunks(records, count):
    chunks = torch.arange(records).chunk(count)
    for index, chunk in enumerate(chunks):
        start, stop = chunk_bounds(records, count, index)
        assert torch.equal(torch.arange(start, stop), chunk)
    with pytest.raises(ValueError, match=f"slice {len(chunks) + 1} of {count} does not exist"):
        chunk_bounds(records, count, len(chunks))


def test_torch_chunk_may_make_fewer_slices_than_asked_and_that_is_refused():
    assert len(torch.arange(9).chunk(4)) == 3
    with pytest.raises(ValueError, match=r"slice 4 of 4 does not exist for 9 records .*3 slices"):
        chunk_bounds(9, 4, 3)


def _source(path, name, count):
    lines = [
        json.dumps({"messages": [{"role": "user", "content": f"{name}{i}"}]}) for i in range(count)
    ]
    path.write_text("\n".join(lines[:3]) + "\n\n" + "\n".join(lines[3:]) + "\n")  # a blank line
    return path, lines


def test_each_stage_takes_its_slice_of_every_source_in_order(tmp_path):
    (a, a_lines), (b, b_lines) = (
        _source(tmp_path / "a.jsonl", "a", 10),
        _source(tmp_path / "b.jsonl", "b", 8),
    )
    out = tmp_path / "stage" / "s2.jsonl"
    assert write_stage_slice([a, b], 4, 2, out) == [3, 2]
    assert out.read_text().splitlines() == a_lines[3:6] + b_lines[2:4]
    for index in range(1, 5):  # the stages together hold every record once
        write_stage_slice([a, b], 4, index, tmp_path / f"{index}.jsonl")
    together = [
        line for i in range(1, 5) for line in (tmp_path / f"{i}.jsonl").read_text().splitlines()
    ]
    assert sorted(together) == sorted(a_lines + b_lines)


@pytest.mark.parametrize(
    "args,message",
    [
        (["--slices", "0", "--index", "1"], "number of slices must be at least 1, not 0"),
        (["--slices", "4", "--index", "0"], "--index=0 must be at least 1 (the stages count"),
        (["--slices", "4", "--index", "5"], "slice 5 of 4 does not exist"),
        (["--slices", "20", "--index", "11"], r"slice 11 of 20 does not exist for 10 records"),
    ],
)
def test_bad_requests_fail_by_name_and_leave_the_output_alone(tmp_path, capsys, args, message):
    source, _ = _source(tmp_path / "a.jsonl", "a", 10)
    out = tmp_path / "stage.jsonl"
    out.write_text("kept\n")
    assert stage_slice([str(source), "--output", str(out), *args]) == 1
    assert message in capsys.readouterr().err
    assert out.read_text() == "kept\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.jsonl", "stage.jsonl"]


def test_missing_and_empty_sources_are_named(tmp_path, capsys):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n")
    out = str(tmp_path / "o.jsonl")
    assert (
        stage_slice(
            [str(tmp_path / "none.jsonl"), "--slices", "1", "--index", "1", "--output", out]
        )
        == 1
    )
    assert "none.jsonl does not exist" in capsys.readouterr().err
    assert stage_slice([str(empty), "--slices", "1", "--index", "1", "--output", out]) == 1
    assert "empty.jsonl holds no records" in capsys.readouterr().err


def test_a_slice_written_over_its_source_or_from_a_bad_line_is_refused(tmp_path, capsys):
    source, lines = _source(tmp_path / "a.jsonl", "a", 10)
    before = source.read_text()
    args = ["--slices", "2", "--index", "1", "--output"]
    assert stage_slice([str(source), *args, str(tmp_path / "." / "a.jsonl")]) == 1
    assert f"is the source {source}: its slice would replace it" in capsys.readouterr().err
    assert source.read_text() == before
    broken = tmp_path / "b.jsonl"
    broken.write_text(lines[0] + "\n\n{not json\n")
    out = tmp_path / "out.jsonl"
    assert stage_slice([str(source), str(broken), *args, str(out)]) == 1
    assert f"{broken}:3 is not a JSON record" in capsys.readouterr().err
    assert not out.exists()
