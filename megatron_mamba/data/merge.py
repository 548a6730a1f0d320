"""Concatenate token shards into one .bin, verified against the index that describes them all
(the Pythia Pile ships document-0000N-of-00020.bin shards and a single document.idx)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from megatron_mamba.data.indexed import DatasetError, IndexSummary, check_pair


def merge_shards(shards: list[Path], index: Path, output_prefix: str | Path) -> IndexSummary:
    """Write `output_prefix`.bin (the shards in the given order) and `.idx` (a copy of `index`);
    the result must match the index exactly, or nothing is left under the output name."""
    missing = [str(s) for s in shards if not Path(s).is_file()]
    if missing:
        raise DatasetError(f"shard(s) not found: {', '.join(missing)}")
    out_bin, out_idx = Path(f"{output_prefix}.bin"), Path(f"{output_prefix}.idx")
    tmp_prefix = out_bin.with_name(f"{out_bin.stem}.tmp-{os.getpid()}")
    tmp_bin, tmp_idx = Path(f"{tmp_prefix}.bin"), Path(f"{tmp_prefix}.idx")
    try:
        with open(tmp_bin, "wb") as out:
            for shard in shards:
                with open(shard, "rb") as f:
                    shutil.copyfileobj(f, out, length=64 << 20)
        shutil.copyfile(index, tmp_idx)
        summary = check_pair(tmp_prefix)
        os.replace(tmp_bin, out_bin)
        os.replace(tmp_idx, out_idx)
    finally:
        tmp_bin.unlink(missing_ok=True)
        tmp_idx.unlink(missing_ok=True)
    return summary


def merge_datasets(prefixes: list[str | Path], output_prefix: str | Path) -> IndexSummary:
    """Concatenate whole .bin/.idx pairs (e.g. preprocessing shards) into one, in order; each
    input is checked first, all must share a token dtype, and the output appears only whole."""
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

    summaries = [check_pair(p) for p in prefixes]
    dtypes = {s.dtype for s in summaries}
    if len(dtypes) != 1:
        found = ", ".join(f"{s.prefix}: {s.dtype.__name__}" for s in summaries)
        raise DatasetError(f"inputs have different token dtypes ({found})")
    out_bin, out_idx = Path(f"{output_prefix}.bin"), Path(f"{output_prefix}.idx")
    tmp_prefix = out_bin.with_name(f"{out_bin.stem}.tmp-{os.getpid()}")
    tmp_bin, tmp_idx = Path(f"{tmp_prefix}.bin"), Path(f"{tmp_prefix}.idx")
    try:
        builder = IndexedDatasetBuilder(str(tmp_bin), dtype=dtypes.pop())
        for prefix in prefixes:
            builder.add_index(str(prefix))
        builder.finalize(str(tmp_idx))
        summary = check_pair(tmp_prefix)
        os.replace(tmp_bin, out_bin)
        os.replace(tmp_idx, out_idx)
    finally:
        tmp_bin.unlink(missing_ok=True)
        tmp_idx.unlink(missing_ok=True)
    return summary
