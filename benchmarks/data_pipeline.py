"""Data pipeline throughput on CPU: preprocessing against a straightforward loop, and reading
Pythia-layout batches against what a training step consumes.

Preprocessing (best of 3, interleaved): the same jsonl and tokenizer (a BPE trained here,
vocabulary 8000) through (a) a single-process loop — `tokenizer.encode` per document and
megatron's IndexedDatasetBuilder — and (b) `megatron_mamba.data.preprocess` (batched encoding,
worker processes). Reading: tokens/s of `PythiaPreshuffled.batches` (global batch 1024 of
2049-token items, one data-parallel rank of 8).

    taskset -c 0,1 python benchmarks/data_pipeline.py
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from megatron.core.datasets.indexed_dataset import DType, IndexedDatasetBuilder
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from benchmarks.common import save_report
from megatron_mamba.data.preprocess import load_tokenizer, preprocess, read_documents
from megatron_mamba.data.pythia import DataOrder, PythiaPreshuffled

WORDS = " ".join(
    [
        "the of and to in a is that for it as was with be by on not he this are or his from at",
        "which but have an they you were her she there been one all we their has would when if",
        "so no will mamba attention state space model sequence token layer training teacher",
    ]
).split()


def synthetic_documents(count: int, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    docs = []
    for _ in range(count):
        words = rng.choice(WORDS, size=int(rng.integers(50, 400)))
        numbers = rng.integers(0, 10_000, size=8)
        docs.append(" ".join(words) + " " + " ".join(map(str, numbers)) + ".")
    return docs


def make_tokenizer(directory: Path, docs: list[str]) -> Path:
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=8000, special_tokens=["<unk>", "<eos>"])
    tokenizer.train_from_iterator(docs[:2000], trainer)
    PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, unk_token="<unk>", eos_token="<eos>"
    ).save_pretrained(directory)
    return directory


def straightforward_loop(source: Path, tokenizer_dir: Path, prefix: Path) -> tuple[int, float]:
    tokenizer = load_tokenizer(tokenizer_dir)
    start = time.perf_counter()
    builder = IndexedDatasetBuilder(f"{prefix}.bin", dtype=DType.optimal_dtype(len(tokenizer)))
    tokens = 0
    for doc in read_documents([source]):
        ids = tokenizer.encode(doc, add_special_tokens=False) + [tokenizer.eos_token_id]
        builder.add_item(torch.tensor(ids))
        builder.end_document()
        tokens += len(ids)
    builder.finalize(f"{prefix}.idx")
    return tokens, time.perf_counter() - start


def reading_rate(work: Path, items: int = 8192) -> float:
    builder = IndexedDatasetBuilder(str(work / "pile.bin"), dtype=np.uint16)
    rng = np.random.default_rng(0)
    for _ in range(items):
        builder.add_document(rng.integers(0, 50000, 2049, dtype=np.uint16), [2049])
    builder.finalize(str(work / "pile.idx"))
    data = PythiaPreshuffled(work / "pile")
    order = DataOrder(global_batch=1024, dp_size=8)
    start = time.perf_counter()
    tokens = sum(batch.numel() for batch in data.batches(order, dp_rank=3))
    return tokens / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--documents", type=int, default=20000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        docs = synthetic_documents(args.documents)
        source = work / "docs.jsonl"
        source.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
        tokenizer_dir = make_tokenizer(work / "tokenizer", docs)
        # Best of `repeats`, interleaved, so a busy moment on a shared host hits all alike.
        best: dict[str, float] = {}
        for _ in range(args.repeats):
            tokens, seconds = straightforward_loop(source, tokenizer_dir, work / "loop")
            best["loop"] = min(best.get("loop", seconds), seconds)
            for workers in (1, 2):
                stats = preprocess(
                    [source],
                    tokenizer_dir,
                    work / f"ours{workers}",
                    workers=workers,
                    progress=False,
                    overwrite=True,  # each repeat writes the same output again
                )
                assert stats.tokens == tokens
                ours = (work / f"ours{workers}.bin").read_bytes()
                assert ours == (work / "loop.bin").read_bytes(), "output differs from the loop's"
                best[workers] = min(best.get(workers, stats.seconds), stats.seconds)
        rows = [
            {"name": "loop: encode per document + builder", "tokens_per_s": tokens / best["loop"]}
        ]
        rows += [
            {"name": f"megatron_mamba preprocess, {w} worker(s)", "tokens_per_s": tokens / best[w]}
            for w in (1, 2)
        ]
        read = reading_rate(work)
    base = rows[0]["tokens_per_s"]
    print(f"{tokens:,} tokens in {args.documents:,} documents\n")
    print("| preprocessing | tokens/s | × loop |\n|---|---|---|")
    for row in rows:
        row["speedup"] = row["tokens_per_s"] / base
        print(f"| {row['name']} | {row['tokens_per_s']:,.0f} | {row['speedup']:.2f} |")
    print(f"\nreading Pythia batches (one DP rank of 8): {read:,.0f} tokens/s")
    save_report(args.out, {"preprocess": rows, "read_tokens_per_s": read})


if __name__ == "__main__":
    main()
