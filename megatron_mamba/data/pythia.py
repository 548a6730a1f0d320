"""EleutherAI's pre-shuffled Pythia Pile, read in Pythia's training order.

Each item of document.idx is one 2049-token sequence, already in the order Pythia saw them: sample
i is item i, and step s of a run with global batch B is items s·B … s·B+B−1. Data-parallel rank r
of W takes the r-th contiguous B/W of each global batch (Megatron's pretraining sampler), so ranks
never overlap and together see exactly the global batch. Resuming at step s starts at item s·B.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from megatron_mamba.data.indexed import DatasetError, open_indexed

PYTHIA_SEQUENCE = 2049


@dataclass(frozen=True)
class DataOrder:
    """Which items each data-parallel rank reads at each step."""

    global_batch: int
    dp_size: int = 1
    first_item: int = 0
    """Item of step 0 (skip a prefix of the data, e.g. to continue from Pythia's step k)."""
    max_train_samples: int | None = None
    """Use only the first this many samples (whole global batches of them)."""
    epochs: int = 1
    """Passes over those samples, in the same order each time (CALD's num_train_epochs)."""

    def __post_init__(self) -> None:
        """Refuses values that would silently wrap around (a negative item indexes from the end)
        or give no data."""
        if self.dp_size < 1:
            raise ValueError(f"data-parallel size {self.dp_size} must be positive")
        if self.global_batch < 1 or self.global_batch % self.dp_size:
            raise ValueError(
                f"global batch {self.global_batch} must be a positive multiple of the "
                f"data-parallel size {self.dp_size}"
            )
        if self.first_item < 0:
            raise ValueError(f"first_item={self.first_item} must be non-negative")
        if self.max_train_samples is not None and self.max_train_samples < 1:
            raise ValueError(f"max_train_samples={self.max_train_samples} must be positive")
        if self.epochs < 1:
            raise ValueError(f"epochs={self.epochs} must be positive")

    def samples(self, available: int) -> int:
        """The items an epoch draws from: from first_item on, at most max_train_samples."""
        samples = available - self.first_item
        if self.max_train_samples is not None:
            samples = min(samples, self.max_train_samples)
        return max(samples, 0)

    def steps_per_epoch(self, available: int) -> int:
        """How many whole global batches the data (and max_train_samples) allow."""
        return self.samples(available) // self.global_batch

    def steps(self, available: int) -> int:
        return self.epochs * self.steps_per_epoch(available)

    def items(self, step: int, dp_rank: int) -> range:
        per_rank = self.global_batch // self.dp_size
        start = self.first_item + step * self.global_batch + dp_rank * per_rank
        return range(start, start + per_rank)


class PythiaPreshuffled:
    """The pre-shuffled Pile (merged .bin, or shard 00000 with the full document.idx)."""

    def __init__(
        self,
        prefix: str | Path,
        vocab_size: int | None = None,
        allow_short_bin: bool = False,
        sequence_length: int = PYTHIA_SEQUENCE,
    ):
        self.dataset, self.summary = open_indexed(prefix, vocab_size, allow_short_bin)
        lengths = self.dataset.sequence_lengths[: self.summary.usable_sequences]
        wrong = np.flatnonzero(lengths != sequence_length)
        if wrong.size:
            raise DatasetError(
                f"{prefix}.idx item {int(wrong[0])} has {int(lengths[wrong[0]])} tokens; the "
                f"pre-shuffled Pile has {sequence_length} per item"
            )
        self.sequence_length = sequence_length

    def __len__(self) -> int:
        """Items readable from the .bin (fewer than the index's when only a shard is present)."""
        return self.summary.usable_sequences

    def __getitem__(self, item: int) -> np.ndarray:
        if not 0 <= item < len(self):
            raise IndexError(
                f"item {item} is past the end of {self.summary.prefix}.bin, which holds "
                f"{len(self)} of the index's {self.summary.sequences} items"
            )
        return self.dataset[item]

    def batches(
        self, order: DataOrder, dp_rank: int, start_step: int = 0
    ) -> Iterator[torch.Tensor]:
        """This rank's [B/W, 2049] token batches from `start_step` on (resume: the step to run)."""
        return ordered_batches(self, order, dp_rank, start_step)


def ordered_batches(
    items, order: DataOrder, dp_rank: int, start_step: int = 0
) -> Iterator[torch.Tensor]:
    """This rank's [B/W, item length] token batches of fixed-length `items` (indexable, with a
    length) from `start_step` on; each epoch repeats the same order."""
    per_epoch = order.steps_per_epoch(len(items))
    for step in range(start_step, order.steps(len(items))):
        rows = [items[i] for i in order.items(step % per_epoch, dp_rank)]
        yield torch.from_numpy(np.stack(rows).astype(np.int64))
