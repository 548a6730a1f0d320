"""General corpora through megatron-core's GPTDataset and BlendedMegatronDatasetBuilder: blends
with weights, train/valid/test splits, fixed-length samples and cached shuffle indices.

megatron's dataset wants a Megatron tokenizer; it reads only the vocabulary size and the
end-of-document id, which `HFTokenizerInfo` takes from an HF tokenizer. Every .bin/.idx pair is
checked (header, sizes, token ids within the vocabulary) before megatron opens it; faults are
DatasetErrors, which the trainer reports in one line.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from megatron.core.datasets.blended_megatron_dataset_builder import BlendedMegatronDatasetBuilder
from megatron.core.datasets.gpt_dataset import GPTDataset, GPTDatasetConfig

from megatron_mamba.data.indexed import DatasetError, check_pair
from megatron_mamba.data.pythia import ordered_batches


@dataclass(frozen=True)
class HFTokenizerInfo:
    """The two facts megatron's GPTDataset reads from a tokenizer."""

    vocab_size: int
    eod: int

    @property
    def unique_identifiers(self) -> dict:
        """What megatron hashes into the names of its cached indices."""
        return {"class": type(self).__name__, "vocab_size": self.vocab_size, "eod": self.eod}

    @classmethod
    def from_hf(cls, tokenizer) -> HFTokenizerInfo:
        if tokenizer.eos_token_id is None:
            raise DatasetError(f"tokenizer {tokenizer.name_or_path} has no eos token for EOD")
        return cls(vocab_size=len(tokenizer), eod=tokenizer.eos_token_id)


def _check_splits(prefix: str, documents: int, split: str, samples: tuple[int | None, ...]) -> None:
    """megatron splits documents by rounded fractions and loops forever over an empty split that
    is asked for samples; refuse that instead."""
    weights = [float(w) for w in split.replace("/", ",").split(",")]
    weights += [0.0] * (3 - len(weights))
    total = sum(weights)
    bounds = [0.0]
    for w in weights:
        bounds.append(bounds[-1] + w / total)
    names = ("train", "valid", "test")
    for i, wanted in enumerate(samples):
        count = round(bounds[i + 1] * documents) - round(bounds[i] * documents)
        if wanted and count == 0:
            raise DatasetError(
                f"{prefix} has {documents} documents; split {split!r} leaves its {names[i]} part "
                f"empty, but {wanted} {names[i]} samples were asked for"
            )


def build_gpt_datasets(
    blend: list[tuple[str | Path, float | None]],
    tokenizer: HFTokenizerInfo,
    sequence_length: int,
    samples: tuple[int | None, int, int],
    split: str = "969,30,1",
    seed: int = 1234,
    cache_dir: str | Path | None = None,
) -> tuple[GPTDataset | None, GPTDataset | None, GPTDataset | None]:
    """(train, valid, test) over the `blend` of .bin/.idx prefixes (weights None: by size; a
    None sample count: one pass); each sample is a dict with tokens, labels, loss_mask,
    position_ids of `sequence_length`."""
    prefixes = [str(prefix) for prefix, _ in blend]
    for prefix in prefixes:
        summary = check_pair(prefix, vocab_size=tokenizer.vocab_size)
        _check_splits(prefix, summary.documents, split, samples)
    config = GPTDatasetConfig(
        random_seed=seed,
        sequence_length=sequence_length,
        blend=(prefixes, None if blend[0][1] is None else [float(w) for _, w in blend]),
        split=split,
        path_to_cache=str(cache_dir) if cache_dir else None,
        tokenizer=tokenizer,
        reset_position_ids=False,
        reset_attention_mask=False,
        eod_mask_loss=False,
        create_attention_mask=False,
    )
    return tuple(
        BlendedMegatronDatasetBuilder(GPTDataset, list(samples), lambda: True, config).build()
    )


def parse_blend(spec: str) -> list[tuple[str, float | None]]:
    """megatron's data-path syntax: "prefix", "prefix_a prefix_b" (weighted by size) or
    "0.7 prefix_a 0.3 prefix_b"."""
    words = spec.split()
    if not words:
        raise DatasetError("data.path is empty; expected a .bin/.idx prefix or a weighted blend")
    try:
        float(words[0])
    except ValueError:
        return [(word, None) for word in words]
    if len(words) % 2:
        raise DatasetError(f"data.path {spec!r} is not a list of weight prefix pairs")
    blend = []
    for weight, prefix in zip(words[::2], words[1::2], strict=True):
        try:
            value = float(weight)
        except ValueError:
            raise DatasetError(f"data.path {spec!r}: {weight!r} is not a weight") from None
        if not 0 < value < math.inf:  # megatron asserts, without a message, on the rest
            raise DatasetError(f"data.path {spec!r}: weight {weight} must be a positive number")
        blend.append((prefix, value))
    return blend


class CorpusSamples:
    """data_tools output for the trainer: megatron's GPTDataset samples of `item_length` tokens
    (documents joined by EOD and cut into windows, shuffled by `seed`) over one prefix or a
    blend, read in the trainer's data order (data-parallel shards, exact resume)."""

    def __init__(
        self,
        spec: str,
        tokenizer: HFTokenizerInfo,
        item_length: int,
        seed: int,
        samples: int | None = None,
        cache_dir: str | Path | None = None,
    ):
        blend = parse_blend(spec)
        weighted = blend[0][1] is not None
        if weighted and samples is None:
            raise DatasetError(
                f"data.path {spec!r} is a weighted blend; megatron needs the number of samples "
                "to draw from it: set train.max_train_samples"
            )
        train, _, _ = build_gpt_datasets(
            blend, tokenizer, item_length - 1, (samples, 0, 0), "1,0,0", seed, cache_dir
        )
        self.dataset = train

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, item: int) -> np.ndarray:
        sample = self.dataset[item]
        return torch.cat([sample["tokens"], sample["labels"][-1:]]).numpy()

    def batches(self, order, dp_rank: int, start_step: int = 0) -> Iterator[torch.Tensor]:
        return ordered_batches(self, order, dp_rank, start_step)
