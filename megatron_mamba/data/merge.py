"""Concatenate token shards into one .bin, verified against the index that describes them all
(the Pythia Pile ships shards document-00000-of-00020.bin … document-00020-of-00020.bin and a
single document.idx).

Inputs are checked before anything is written, so errors name the user's files, not the
temporary ones the output is assembled under."""

from __future__ import annotations

import dataclasses
import re
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

_SHARD_NAME = re.compile(r"(.*)-(\d{5})-of-(\d{5})\.bin")


def _check_shard_set(shards: list[Path]) -> None:
    """Shards named as EleutherAI names them (`-NNNNN-of-LLLLL.bin`, LLLLL the *last* number:
    the Pile's are 00000 … 00020) must be the whole set in order; equal-sized shards in the wrong
    order would pass the size check and scramble Pythia's training order."""
    names = [_SHARD_NAME.fullmatch(Path(s).name) for s in shards]
    if not all(names) or len({(m[1], m[3]) for m in names}) != 1:
        return  # not one EleutherAI-style set: only the total size can be checked
    numbers, last = [int(m[2]) for m in names], int(names[0][3])
    if numbers != list(range(last + 1)):
        missing = sorted(set(range(last + 1)) - set(numbers))
        fault = (
            f"missing {', '.join(f'{n:05}' for n in missing)}"
            if missing
            else "repeated or out of order"
        )
        raise DatasetError(
            f"shards {', '.join(f'{n:05}' for n in numbers)} of {names[0][1]}-*-of-{last:05}.bin "
            f"are not the set 00000 … {last:05} in order ({fault})"
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
    _check_shard_set(shards)
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
