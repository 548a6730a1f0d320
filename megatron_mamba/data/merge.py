"""Concatenate token shards into one .bin, verified against the index that describes them all
(the Pythia Pile ships document-0000N-of-00020.bin shards and a single document.idx).

Inputs are checked before anything is written, so errors name the user's files, not the
temporary ones the output is assembled under."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import numpy as np

from megatron_mamba.data.indexed import (
    DatasetError,
    IndexSummary,
    check_pair,
    read_index,
    writing_pair,
)


def merge_shards(
    shards: list[Path], index: Path, output_prefix: str | Path, overwrite: bool = False
) -> IndexSummary:
    """Write `output_prefix`.bin (the shards in the given order) and `.idx` (a copy of `index`,
    or `index` itself when it already is the output's .idx); the result must match the index
    exactly, or nothing is left under the output name."""
    missing = [str(s) for s in shards if not Path(s).is_file()]
    if missing:
        raise DatasetError(f"shard(s) not found: {', '.join(missing)}")
    dtype, lengths, _, _ = read_index(Path(index))
    item = np.dtype(dtype).itemsize
    expected = int(lengths.sum(dtype=np.int64))
    size = sum(Path(s).stat().st_size for s in shards)
    if size != expected * item:
        raise DatasetError(
            f"the {len(shards)} shard(s) {', '.join(map(str, shards))} hold {size} bytes "
            f"({size / item:g} {dtype.__name__} tokens) but {index} describes {expected} tokens: "
            "a shard is missing, truncated or from another index"
        )
    out_idx = Path(f"{output_prefix}.idx")
    in_place = out_idx.is_file() and out_idx.samefile(index)
    with writing_pair(output_prefix, overwrite, keep_index=in_place) as tmp:
        with open(f"{tmp}.bin", "wb") as out:
            for shard in shards:
                with open(shard, "rb") as f:
                    shutil.copyfileobj(f, out, length=64 << 20)
        shutil.copyfile(index, f"{tmp}.idx")
        summary = check_pair(tmp)
    return dataclasses.replace(summary, prefix=str(output_prefix))


def merge_datasets(
    prefixes: list[str | Path], output_prefix: str | Path, overwrite: bool = False
) -> IndexSummary:
    """Concatenate whole .bin/.idx pairs (e.g. preprocessing shards) into one, in order; each
    input is checked first, all must share a token dtype, and the output appears only whole."""
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

    summaries = [check_pair(p) for p in prefixes]
    dtypes = {s.dtype for s in summaries}
    if len(dtypes) != 1:
        found = ", ".join(f"{s.prefix}: {s.dtype.__name__}" for s in summaries)
        raise DatasetError(f"inputs have different token dtypes ({found})")
    with writing_pair(output_prefix, overwrite) as tmp:
        builder = IndexedDatasetBuilder(f"{tmp}.bin", dtype=dtypes.pop())
        for prefix in prefixes:
            builder.add_index(str(prefix))
        builder.finalize(f"{tmp}.idx")
        summary = check_pair(tmp)
    return dataclasses.replace(summary, prefix=str(output_prefix))
