"""Chat (SFT) and preference (DPO) datasets read from jsonl, in the trainer's batch order.

Every record is tokenized through the tokenizer's chat template once, at load, and right-padded
(or truncated) to `item_length` tokens, so batches have the fixed shape megatron's pipeline
schedule sends between stages. Records are shuffled with the run's seed, a new permutation each
epoch; step s of epoch e reads the same items however often the run is resumed.

- chat: {"messages": [{"role": ..., "content": ...}, ...]} per line (UltraChat / sftdataset,
  or teacher-generated pseudo-labels); loss on the assistant turns.
- preference: {"prompt": ..., "chosen": ..., "rejected": ...} per line, the responses as text or
  as conversations that repeat the prompt (UltraFeedback binarized); loss masks on the responses.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from megatron_mamba.data.batches import PreferenceBatch, TokenBatch
from megatron_mamba.data.chat import pad_batch, read_jsonl, tokenize_chat, tokenize_preference
from megatron_mamba.data.indexed import DatasetError
from megatron_mamba.data.preprocess import load_tokenizer
from megatron_mamba.data.pythia import DataOrder


def _pad_id(tokenizer) -> int:
    pad = tokenizer.pad_token_id
    return pad if pad is not None else tokenizer.eos_token_id


def _token_batch(examples, pad_id: int, length: int, train_on: str = "assistant") -> TokenBatch:
    padded = pad_batch(examples, pad_id, length)
    if train_on == "all":  # every target but padding
        return TokenBatch(padded["tokens"], padded["attention_mask"][:, 1:].float())
    return TokenBatch(padded["tokens"], padded["loss_mask"][:, :-1])


def packed_rows(examples, length: int, eos_id: int, train_on: str = "assistant") -> TokenBatch:
    """The examples joined into one stream (each as tokenized, so each begins with its BOS where
    the tokenizer adds one, and followed by `eos_id`, TRL's concat token) and cut into rows of
    `length` tokens, the remainder dropped, as TRL's SFT packing (alignment-handbook,
    MambaInLlama) builds its rows. A row's targets may cross from one conversation into the
    next, as there; the loss mask travels with the tokens (0 on the added EOS unless "all")."""
    ids = torch.tensor([t for e in examples for t in [*e.input_ids, eos_id]])
    if train_on == "all":
        mask = torch.ones(len(ids))
    else:
        mask = torch.tensor(
            [m for e in examples for m in [*e.assistant_mask, 0]], dtype=torch.float32
        )
    rows = len(ids) // length
    tokens, mask = ids[: rows * length].view(rows, length), mask[: rows * length].view(rows, length)
    return TokenBatch(tokens, mask[:, 1:].contiguous())


def epoch_permutation(count: int, seed: int, epoch: int) -> np.ndarray:
    return np.random.default_rng([seed, epoch]).permutation(count)


class _Records:
    """Rows in memory, read in the order of a DataOrder with per-epoch shuffling."""

    def __init__(self, path: str | Path, seed: int, shuffle: bool):
        self.path, self.seed, self.shuffle = Path(path), seed, shuffle
        if not self.path.is_file():
            raise FileNotFoundError(f"data file {self.path} does not exist")
        self.truncated = 0

    def __len__(self) -> int:
        raise NotImplementedError

    def rows(self, indices) -> TokenBatch | PreferenceBatch:
        raise NotImplementedError

    def batches(self, order: DataOrder, dp_rank: int, start_step: int = 0) -> Iterator:
        """Each epoch a new permutation of the same items, `order.samples` of them from
        first_item on (as transformers' Trainer shuffles a `select`ed subset each epoch); a
        remainder short of a global batch is dropped, different items each epoch."""
        per_epoch, pool = order.steps_per_epoch(len(self)), order.samples(len(self))
        for step in range(start_step, order.steps(len(self))):
            epoch, within = divmod(step, per_epoch)
            items = np.asarray(order.items(within, dp_rank))
            if self.shuffle:
                offsets = items - order.first_item
                items = order.first_item + epoch_permutation(pool, self.seed, epoch)[offsets]
            yield self.rows(torch.from_numpy(items))

    def _check_vocabulary(self, batches: list[TokenBatch], vocab_size: int | None) -> None:
        """Refuses token ids the model has no embedding for (a tokenizer not the model's)."""
        if vocab_size is None:
            return
        largest = max(int(b.tokens.max()) for b in batches)
        if largest >= vocab_size:
            raise DatasetError(
                f"{self.path} tokenizes to id {largest}, outside the model's vocabulary of "
                f"{vocab_size}: data.tokenizer is not this model's tokenizer"
            )

    def _check_length(self, examples, item_length: int, need_assistant: bool = True) -> None:
        """Refuses no records, or (`need_assistant`: the loss is on assistant tokens) none with
        an assistant target within item_length."""
        if not examples:
            raise DatasetError(f"{self.path} holds no records")
        self.truncated += sum(len(e.input_ids) >= item_length for e in examples)
        if need_assistant and all(sum(e.assistant_mask[1:item_length]) == 0 for e in examples):
            raise DatasetError(
                f"no record of {self.path} has an assistant token within item_length="
                f"{item_length}; nothing would be trained"
            )


class ChatDataset(_Records):
    """Conversations, one per row padded or cut to item_length; or, with `pack`, joined in a
    seeded order and cut into full rows. `train_on`: "assistant" tokens carry the loss, or
    "all" tokens (but padding)."""

    def __init__(
        self,
        path,
        tokenizer_dir,
        item_length: int,
        seed=0,
        shuffle=True,
        empty_system=False,
        vocab_size: int | None = None,
        pack: bool = False,
        train_on: str = "assistant",
    ):
        super().__init__(path, seed, shuffle)
        tokenizer = load_tokenizer(tokenizer_dir)
        examples = [
            tokenize_chat(
                tokenizer,
                record["messages"],
                None if pack else item_length,
                empty_system,
                where=where,
            )
            for where, record in read_jsonl(self.path, ("messages",))
        ]
        if pack:
            # the records in a seeded order before joining (alignment-handbook shuffles them)
            count = len(examples)
            order = np.random.default_rng(seed).permutation(count) if shuffle else range(count)
            if tokenizer.eos_token_id is None:
                raise DatasetError(f"data.pack joins chats with EOS; {tokenizer_dir} has none")
            joined = [examples[i] for i in order]
            self.data = packed_rows(joined, item_length, tokenizer.eos_token_id, train_on)
            if not len(self.data):
                raise DatasetError(
                    f"{self.path} joins into {sum(len(e.input_ids) + 1 for e in examples)} "
                    f"tokens, less than one packed row of item_length={item_length}"
                )
        else:
            self._check_length(examples, item_length, train_on == "assistant")
            self.data = _token_batch(examples, _pad_id(tokenizer), item_length, train_on)
        if not self.data.loss_mask.any():
            raise DatasetError(f"no target of {self.path} carries loss; nothing would be trained")
        self._check_vocabulary([self.data], vocab_size)

    def __len__(self) -> int:
        return len(self.data)

    def rows(self, indices) -> TokenBatch:
        return self.data.rows(indices)


class PreferenceDataset(_Records):
    """Pairs cut to item_length; with `max_prompt_length`, as TRL's keep_end truncation
    (data/chat.py's tokenize_preference)."""

    def __init__(
        self,
        path,
        tokenizer_dir,
        item_length: int,
        seed=0,
        shuffle=True,
        empty_system=False,
        vocab_size: int | None = None,
        max_prompt_length: int | None = None,
    ):
        super().__init__(path, seed, shuffle)
        tokenizer = load_tokenizer(tokenizer_dir)
        pairs = [
            tokenize_preference(
                tokenizer,
                r["prompt"],
                r["chosen"],
                r["rejected"],
                item_length,
                empty_system,
                max_prompt_length,
                where,
            )
            for where, r in read_jsonl(self.path, ("prompt", "chosen", "rejected"))
        ]
        self._check_length([p.chosen for p in pairs] + [p.rejected for p in pairs], item_length)
        pad = _pad_id(tokenizer)
        self.chosen = _token_batch([p.chosen for p in pairs], pad, item_length)
        self.rejected = _token_batch([p.rejected for p in pairs], pad, item_length)
        self._check_vocabulary([self.chosen, self.rejected], vocab_size)
        self.reference: torch.Tensor | None = None
        """[records, 2] the reference's log-probabilities of each pair, once computed before
        training (training/reference_logps.py); they then travel with the rows."""

    def __len__(self) -> int:
        return len(self.chosen)

    def rows(self, indices) -> PreferenceBatch:
        reference = self.reference[indices] if self.reference is not None else None
        return PreferenceBatch(self.chosen.rows(indices), self.rejected.rows(indices), reference)
