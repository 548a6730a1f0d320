"""The training data of one step-wise distillation stage, cut as MambaInLlama cuts it.

MambaInLlama's train_hybrid_step.py gives progressive stage k (0-based) the k-th of
`total_progressive_step` chunks of *each* source (torch.chunk: chunks of ceil(n / count) records,
the last one shorter) and concatenates them, so every stage sees every source in proportion.
Here the sources are jsonl files and the chunks are their non-empty lines, kept byte for byte
(each checked to be JSON first, so that a bad line is named in its source, not in the slice).
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path


def chunk_bounds(records: int, count: int, index: int) -> tuple[int, int]:
    """[start, stop) of the `index`-th (0-based) of `count` chunks of `records` items, as
    torch.chunk splits them; refuses an index torch.chunk would not produce."""
    if count < 1:
        raise ValueError(f"the number of slices must be at least 1, not {count}")
    size = math.ceil(records / count)
    chunks = math.ceil(records / size) if size else 0
    if not 0 <= index < chunks:
        raise ValueError(
            f"slice {index + 1} of {count} does not exist for {records} records (they make "
            f"{chunks} slices of {size}); use fewer slices or more data"
        )
    return index * size, min(records, (index + 1) * size)


def _records(path: Path) -> list[bytes]:
    if not path.is_file():
        raise FileNotFoundError(f"data file {path} does not exist (expected a jsonl file)")
    records = []
    for number, line in enumerate(path.read_bytes().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            json.loads(line)
        except ValueError as error:  # UnicodeDecodeError included
            raise ValueError(f"{path}:{number} is not a JSON record ({error})") from None
        records.append(line)
    if not records:
        raise ValueError(f"{path} holds no records")
    return records


def write_stage_slice(
    sources: Sequence[str | Path], count: int, index: int, output: str | Path
) -> list[int]:
    """Write the `index`-th (1-based, as the stages count) of `count` slices of every source,
    concatenated in the order given, to `output` (replaced whole, or left untouched on error);
    returns the records taken from each source."""
    if not sources:
        raise ValueError("no source files given")
    if index < 1:
        raise ValueError(f"--index={index} must be at least 1 (the stages count from 1)")
    output = Path(output)
    for source in map(Path, sources):
        if output.exists() and source.exists() and output.samefile(source):
            raise ValueError(
                f"the output {output} is the source {source}: its slice would replace it; "
                "write the slice to another file"
            )
    taken, pieces = [], []
    for source in map(Path, sources):
        records = _records(source)
        start, stop = chunk_bounds(len(records), count, index - 1)
        pieces.extend(records[start:stop])
        taken.append(stop - start)
    output.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=output.parent, prefix=f".{output.name}.")
    try:
        with os.fdopen(handle, "wb") as f:
            f.writelines(piece + b"\n" for piece in pieces)
        os.replace(temporary, output)
    except BaseException:
        os.unlink(temporary)
        raise
    return taken
