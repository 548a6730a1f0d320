"""jsonl or plain text → a Megatron .bin/.idx pair, tokenised by an HF tokenizer from a local path.

Documents are tokenised in batches by worker processes (each loads the tokenizer once) and written
in input order; an EOD token follows each document. Both files are written under temporary names
and renamed only when complete, so a failure never leaves a half-written pair under the final name.
"""

from __future__ import annotations

import itertools
import json
import multiprocessing
import os
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from megatron.core.datasets.indexed_dataset import DType, IndexedDatasetBuilder
from tqdm import tqdm

from megatron_mamba.data.indexed import DatasetError, writing_pair

_tokenizer = None
_append_eod = True
_dtype = None


@dataclass(frozen=True)
class PreprocessStats:
    documents: int
    tokens: int
    seconds: float

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds if self.seconds else 0.0


def load_tokenizer(path: str | Path):
    """An HF tokenizer from a local directory; one that transformers cannot load is a
    DatasetError naming the directory (transformers' own message spans several lines)."""
    from transformers import AutoTokenizer

    if Path(path).is_file():
        raise DatasetError(
            f"tokenizer {path} is a file; expected the directory holding it (with its "
            "tokenizer_config.json), as save_pretrained writes it"
        )
    if not Path(path).is_dir():
        raise FileNotFoundError(f"tokenizer directory {path} does not exist (no downloads here)")
    try:
        return AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    except (OSError, ValueError) as error:
        reason = (str(error).strip() or type(error).__name__).splitlines()[0]
        raise DatasetError(
            f"{path} is not a tokenizer directory transformers can load: {reason}"
        ) from error


def read_documents(paths: Iterable[Path], json_key: str = "text") -> Iterator[str]:
    """Documents in order: one per line of .jsonl (its `json_key`), one per non-empty text line.
    A file that is not UTF-8 is refused by name (the codec's own error names only a byte)."""
    for path in paths:
        path = Path(path)
        with open(path, encoding="utf-8") as f:
            for number, line in enumerate(_utf8_lines(f, path), 1):
                if not line.strip():
                    continue
                if path.suffix in (".jsonl", ".json"):
                    try:
                        text = json.loads(line)[json_key]
                    except (json.JSONDecodeError, KeyError, TypeError) as error:
                        raise ValueError(
                            f"{path}:{number} is not a JSON object with a {json_key!r} string"
                        ) from error
                    if not isinstance(text, str):
                        raise ValueError(
                            f"{path}:{number} has {json_key!r} of type {type(text).__name__}; "
                            "expected a string"
                        )
                    yield text
                else:
                    yield line.rstrip("\n")


def _utf8_lines(f, path: Path) -> Iterator[str]:
    try:
        yield from f
    except UnicodeDecodeError as error:
        raise ValueError(f"{path} is not UTF-8 text: {error}") from error


def _batches(documents: Iterator[str], size: int) -> Iterator[list[str]]:
    batch = []
    for doc in documents:
        batch.append(doc)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def _use(tokenizer, append_eod: bool) -> None:
    global _tokenizer, _append_eod, _dtype
    _tokenizer, _append_eod = tokenizer, append_eod
    _dtype = DType.optimal_dtype(len(tokenizer))


def _init_worker(tokenizer_path: str, append_eod: bool) -> None:
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # one process per core instead of threads
    _use(load_tokenizer(tokenizer_path), append_eod)


def _encode(batch: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """A batch of documents → (their tokens back to back, each document's length)."""
    backend = getattr(_tokenizer, "backend_tokenizer", None)
    if backend is not None:  # a fast tokenizer: its Rust core, without the Python wrapping
        ids = [e.ids for e in backend.encode_batch(batch, add_special_tokens=False)]
    else:
        ids = _tokenizer(batch, add_special_tokens=False, return_attention_mask=False)["input_ids"]
    if _append_eod:
        eod = _tokenizer.eos_token_id
        for doc in ids:
            doc.append(eod)
    lengths = np.fromiter((len(doc) for doc in ids), dtype=np.int32, count=len(ids))
    flat = np.fromiter(itertools.chain.from_iterable(ids), dtype=_dtype, count=int(lengths.sum()))
    return flat, lengths[lengths > 0]


def _append_documents(builder: IndexedDatasetBuilder, flat: np.ndarray, lengths) -> None:
    """Many one-sequence documents at once (the builder's add_document takes one at a time)."""
    builder.data_file.write(flat.tobytes(order="C"))
    first = len(builder.sequence_lengths)
    builder.sequence_lengths.extend(lengths.tolist())
    builder.document_indices.extend(range(first + 1, first + len(lengths) + 1))


def preprocess(
    inputs: Iterable[Path],
    tokenizer_path: str | Path,
    output_prefix: str | Path,
    json_key: str = "text",
    workers: int = 1,
    append_eod: bool = True,
    batch_documents: int = 512,
    progress: bool = True,
    overwrite: bool = False,
) -> PreprocessStats:
    """Tokenise `inputs` into `output_prefix`.bin/.idx; an existing pair is replaced only with
    `overwrite`."""
    inputs = [Path(path) for path in inputs]
    if workers < 1:
        raise ValueError(f"workers={workers} must be at least 1")
    for path in inputs:
        if path.is_dir():
            raise ValueError(f"input {path} is a directory; expected jsonl or text files")
        if not path.is_file():
            raise FileNotFoundError(f"input file {path} does not exist")
    tokenizer = load_tokenizer(tokenizer_path)
    eod = tokenizer.eos_token_id
    if append_eod and eod is None:
        raise ValueError(
            f"tokenizer {tokenizer_path} has no eos token to append as end-of-document"
        )
    dtype = DType.optimal_dtype(len(tokenizer))
    documents = tokens = 0
    start = time.perf_counter()
    batches = _batches(read_documents(inputs, json_key), batch_documents)
    pool = None
    try:
        with writing_pair(output_prefix, overwrite) as tmp:
            builder = IndexedDatasetBuilder(f"{tmp}.bin", dtype=dtype)
            if workers > 1:
                pool = multiprocessing.get_context("fork").Pool(
                    workers, initializer=_init_worker, initargs=(str(tokenizer_path), append_eod)
                )
                encoded = pool.imap(_encode, batches)
            else:
                _use(tokenizer, append_eod)
                encoded = map(_encode, batches)
            bar = tqdm(encoded, unit=" batches", disable=not progress)
            for flat, lengths in bar:
                _append_documents(builder, flat, lengths)
                documents += len(lengths)
                tokens += len(flat)
                bar.set_postfix(tokens_per_s=f"{tokens / (time.perf_counter() - start):,.0f}")
            if not documents:  # refused, not written as an empty pair that fails later
                names = ", ".join(map(str, inputs))
                raise ValueError(f"input {names} holds no documents (nothing to tokenise)")
            builder.finalize(f"{tmp}.idx")
    finally:
        if pool is not None:
            pool.terminate()
    return PreprocessStats(documents, tokens, time.perf_counter() - start)
