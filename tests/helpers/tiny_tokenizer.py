"""A tiny BPE tokenizer trained locally on the quickstart corpus, saved as an HF directory."""

from __future__ import annotations

from pathlib import Path

from megatron_mamba.data.toy_tokenizer import train_toy_tokenizer

CORPUS = Path(__file__).resolve().parents[2] / "examples" / "quickstart" / "corpus.txt"


def corpus_lines() -> list[str]:
    return [line for line in CORPUS.read_text().splitlines() if line.strip()]


def make_tokenizer(directory: Path, vocab_size: int = 300) -> Path:
    return train_toy_tokenizer(corpus_lines(), directory, vocab_size)
