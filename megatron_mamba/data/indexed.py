"""Megatron mmap indexed datasets (.bin/.idx, MMIDIDX v1): checked before use, read through
megatron-core's `IndexedDataset`.

megatron-core asserts on a bad header and trusts the rest; a truncated download or a .bin paired
with the wrong .idx then shows up as garbage tokens or a crash deep inside training. `check_pair`
verifies the header, the index's own consistency, the .bin length and the token ids against the
vocabulary, and raises one `DatasetError` naming the file and what is wrong.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from megatron.core.datasets.indexed_dataset import DType, IndexedDataset

HEADER = b"MMIDIDX\x00\x00"
_FIXED = len(HEADER) + 8 + 1 + 8 + 8  # magic, version, dtype code, sequence and document counts
FULL_SCAN_BYTES = 4 << 30
"""Token files up to this size are scanned whole for the largest id; larger ones by windows."""


class DatasetError(ValueError):
    """A dataset file that cannot be used as it is."""


@dataclass(frozen=True)
class IndexSummary:
    prefix: str
    dtype: type
    sequences: int
    documents: int
    tokens: int
    usable_sequences: int
    """Sequences wholly inside the .bin (all of them unless a short .bin was allowed)."""
    max_token: int | None
    """Largest token id seen (None when not checked)."""


def _paths(prefix: str | Path) -> tuple[Path, Path]:
    prefix = str(prefix)
    return Path(prefix + ".idx"), Path(prefix + ".bin")


def read_index(idx_path: Path):
    """(dtype, sequence lengths, sequence pointers, document indices) of an .idx, checked."""
    if not idx_path.is_file():
        raise DatasetError(f"index file {idx_path} does not exist")
    size = idx_path.stat().st_size
    with open(idx_path, "rb") as f:
        fixed = f.read(_FIXED)
    if len(fixed) < _FIXED or fixed[: len(HEADER)] != HEADER:
        raise DatasetError(
            f"{idx_path} is not a Megatron index: header {fixed[:9]!r}, expected {HEADER!r}"
        )
    version, code, sequences, documents = struct.unpack("<QBQQ", fixed[len(HEADER) :])
    if version != 1:
        raise DatasetError(f"{idx_path} has index version {version}; only version 1 is supported")
    try:
        dtype = DType.dtype_from_code(code)
    except (KeyError, ValueError) as error:
        codes = {d.value: d.name for d in DType}
        raise DatasetError(
            f"{idx_path} has token dtype code {code}; expected one of {codes}"
        ) from error
    expected = _FIXED + 4 * sequences + 8 * sequences + 8 * documents
    if size != expected:
        raise DatasetError(
            f"{idx_path} is {size} bytes but its header ({sequences} sequences, {documents} "
            f"document boundaries) needs {expected}: truncated or corrupt"
        )
    data = np.memmap(idx_path, mode="r", offset=_FIXED)
    lengths = np.frombuffer(data, dtype=np.int32, count=sequences)
    pointers = np.frombuffer(data, dtype=np.int64, count=sequences, offset=4 * sequences)
    doc_index = np.frombuffer(data, dtype=np.int64, count=documents, offset=12 * sequences)
    if sequences and (lengths < 0).any():
        raise DatasetError(f"{idx_path} has negative sequence lengths: corrupt")
    item = np.dtype(dtype).itemsize
    starts = np.zeros(sequences, dtype=np.int64)
    if sequences > 1:
        np.cumsum(lengths[:-1], out=starts[1:])
    if not np.array_equal(pointers, starts * item):
        raise DatasetError(
            f"{idx_path} has sequence pointers that do not follow its lengths: corrupt"
        )
    if (
        documents == 0
        or doc_index[0] != 0
        or doc_index[-1] != sequences
        or (np.diff(doc_index) < 0).any()
    ):
        raise DatasetError(
            f"{idx_path} has document boundaries that do not cover its {sequences} sequences"
        )
    return dtype, lengths, pointers, doc_index


def _token_range(bin_path: Path, dtype, count: int) -> tuple[int, int]:
    """(smallest, largest) token id of the first `count` tokens; a signed or float dtype can hold
    negative ids, which are outside any vocabulary too. An empty range is (0, -1) (an empty file
    cannot be mapped)."""
    if not count:
        return 0, -1
    tokens = np.memmap(bin_path, dtype=dtype, mode="r", shape=(count,))
    signed = not np.issubdtype(dtype, np.unsignedinteger)
    if count * np.dtype(dtype).itemsize <= FULL_SCAN_BYTES:
        return (int(tokens.min()) if signed else 0), int(tokens.max())
    window = (64 << 20) // np.dtype(dtype).itemsize
    starts = np.linspace(0, count - window, num=64, dtype=np.int64)
    windows = [tokens[s : s + window] for s in starts]
    low = int(min(w.min() for w in windows)) if signed else 0
    return low, int(max(w.max() for w in windows))


def dataset_prefix(path: str) -> str:
    """The .bin/.idx prefix a user meant, also when they named the .bin or .idx file itself."""
    for suffix in (".bin", ".idx"):
        if path.endswith(suffix) and not Path(f"{path}.idx").exists():
            return path[: -len(suffix)]
    return path


def output_prefix(path: str) -> str:
    """The prefix a pair is to be written at: naming the .bin or .idx file stands for its
    prefix; a directory is refused (it would write the hidden files `dir/.bin` and `dir/.idx`)."""
    prefix = path[: -len(".bin")] if path.endswith((".bin", ".idx")) else path
    if not prefix or prefix.endswith(("/", os.sep)) or Path(prefix).is_dir():
        example = Path(prefix or ".") / "corpus"
        raise DatasetError(
            f"output prefix {path} names a directory; expected a file prefix such as {example} "
            f"(writes {example}.bin and {example}.idx)"
        )
    return prefix


def check_pair(
    prefix: str | Path, vocab_size: int | None = None, allow_short_bin: bool = False
) -> IndexSummary:
    """Verify a .bin/.idx pair; `allow_short_bin` accepts a .bin holding only the first
    sequences of its index (one shard of the Pythia Pile with the full document.idx)."""
    idx_path, bin_path = _paths(prefix)
    dtype, lengths, pointers, doc_index = read_index(idx_path)
    if not bin_path.is_file():
        raise DatasetError(f"token file {bin_path} does not exist (index {idx_path} does)")
    item = np.dtype(dtype).itemsize
    total = int(lengths.sum(dtype=np.int64))
    bin_bytes = bin_path.stat().st_size
    usable = len(lengths)
    if bin_bytes != total * item:
        if bin_bytes % item:
            raise DatasetError(
                f"{bin_path} is {bin_bytes} bytes, not a whole number of {dtype.__name__} tokens"
            )
        if not (allow_short_bin and bin_bytes < total * item):
            raise DatasetError(
                f"{bin_path} holds {bin_bytes // item} tokens but {idx_path} describes {total}: "
                "truncated, or not the index of this file"
            )
        ends = pointers + lengths.astype(np.int64) * item
        usable = int(np.searchsorted(ends, bin_bytes, side="right"))
    usable_tokens = int(lengths[:usable].sum(dtype=np.int64))
    max_token = None
    if vocab_size is not None:
        min_token, max_token = _token_range(bin_path, dtype, usable_tokens)
        if min_token < 0 or max_token >= vocab_size:
            token = min_token if min_token < 0 else max_token
            raise DatasetError(
                f"{bin_path} has token id {token}, outside the model's vocabulary of "
                f"{vocab_size}: wrong tokenizer or corrupt file"
            )
    return IndexSummary(
        prefix=str(prefix),
        dtype=dtype,
        sequences=len(lengths),
        documents=len(doc_index) - 1,
        tokens=total,
        usable_sequences=usable,
        max_token=max_token,
    )


def open_indexed(
    prefix: str | Path, vocab_size: int | None = None, allow_short_bin: bool = False
) -> tuple[IndexedDataset, IndexSummary]:
    """megatron-core's IndexedDataset over a checked pair, with the check's summary; a pair
    without tokens is refused here (megatron cannot map an empty .bin)."""
    summary = check_pair(prefix, vocab_size, allow_short_bin)
    if _paths(prefix)[1].stat().st_size == 0:
        raise DatasetError(f"{_paths(prefix)[1]} is empty: there are no tokens to read")
    return IndexedDataset(str(prefix), mmap=True), summary


@contextmanager
def writing_pair(
    output_prefix: str | Path, overwrite: bool = False, keep_index: bool = False
) -> Iterator[Path]:
    """A temporary prefix to write a .bin/.idx pair under: renamed to `output_prefix` when the
    block completes, removed if it raises — a final name never holds a half-written pair. An
    existing pair is refused unless `overwrite`.

    A replacement removes the old .idx first and renames the new .idx last, so a reader (or a
    crash) in between meets a .bin without its index, which `check_pair` refuses — never a .bin
    described by the other pair's index.

    `keep_index`: the output's .idx is already the one the new .bin needs (the Pile's document.idx
    next to its merged shards); it is not an existing output, and only the .bin is put in place."""
    out_idx, out_bin = _paths(output_prefix)
    outputs = (out_bin,) if keep_index else (out_bin, out_idx)
    existing = [str(p) for p in outputs if p.exists() or p.is_symlink()]
    if existing and not overwrite:
        verb = "exists" if len(existing) == 1 else "exist"
        raise FileExistsError(
            f"output {' and '.join(existing)} already {verb}; pass --overwrite to replace it"
        )
    out_bin.parent.mkdir(parents=True, exist_ok=True)
    tmp_prefix = out_bin.with_name(f"{out_bin.stem}.tmp-{os.getpid()}")
    tmp_idx, tmp_bin = _paths(tmp_prefix)
    try:
        yield tmp_prefix
        if not keep_index:
            out_idx.unlink(missing_ok=True)
        os.replace(tmp_bin, out_bin)
        if not keep_index:
            os.replace(tmp_idx, out_idx)
    finally:
        tmp_bin.unlink(missing_ok=True)
        tmp_idx.unlink(missing_ok=True)
