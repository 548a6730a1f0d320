"""Held-out windows of an indexed dataset, for perplexity without lm-eval.

A .bin holds its sequences back to back, so the windows are slices of one flat token array:
fixed-length items of `seq_length + 1` tokens (the pre-shuffled Pile layout) are taken as they
are; documents of any other lengths are read as one stream cut into windows of `seq_length + 1`
tokens overlapping by one, so every token after the first is predicted exactly once.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from megatron_mamba.data.indexed import DatasetError, check_pair, read_index


class HeldOutWindows:
    def __init__(
        self,
        prefix: str | Path,
        seq_length: int,
        vocab_size: int | None = None,
        first_window: int = 0,
        max_windows: int | None = None,
    ):
        if seq_length < 1:
            raise ValueError(f"seq_length={seq_length} must be positive")
        if max_windows is not None and max_windows < 1:
            raise ValueError(f"max_windows={max_windows} must be positive (None: all of them)")
        summary = check_pair(prefix, vocab_size)
        _, sizes, _, _ = read_index(Path(f"{prefix}.idx"))
        # an empty .bin cannot be mapped; it has no windows, refused below
        self.tokens = (
            np.memmap(f"{prefix}.bin", dtype=summary.dtype, mode="r")
            if summary.tokens
            else np.zeros(0, dtype=summary.dtype)
        )
        self.width = seq_length + 1
        self.items = bool(len(sizes)) and bool((sizes == self.width).all())
        self.stride = self.width if self.items else seq_length
        stream_windows = max((len(self.tokens) - 1) // self.stride, 0)
        available = len(sizes) if self.items else stream_windows
        if not 0 <= first_window < available:
            raise DatasetError(
                f"{prefix} has {available} held-out windows of {self.width} tokens; "
                f"first_window={first_window} is outside them"
            )
        count = available - first_window
        self.first, self.count = first_window, min(count, max_windows or count)

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, window: int) -> np.ndarray:
        if not 0 <= window < self.count:
            raise IndexError(f"window {window} of {self.count}")
        start = (self.first + window) * self.stride
        return np.asarray(self.tokens[start : start + self.width], dtype=np.int64)
