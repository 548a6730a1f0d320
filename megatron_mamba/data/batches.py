"""What the trainer hands an objective: token rows with an optional loss mask, or preference
pairs. Both split into micro-batches and move to a device as one."""

from __future__ import annotations

from dataclasses import dataclass

import torch

INPUT_MULTIPLE = 8
"""Objectives whose losses are masked pad their inputs to a multiple of this many tokens
(`TokenBatch.with_inputs_padded`): a chat or preference row of item_length tokens holds
item_length − 1 inputs, and TRL's lengths (1024, 2048) would leave an odd count, on which
mamba_ssm's scan and conv kernels take their slower uneven path."""


def _to(tensor: torch.Tensor, device) -> torch.Tensor:
    return tensor.to(device, non_blocking=True)


def padded_length(length: int, multiple: int) -> int:
    """`length` rounded up to a multiple of `multiple`."""
    return -(-length // multiple) * multiple


@dataclass(frozen=True)
class TokenBatch:
    tokens: torch.Tensor
    """[n, L] token ids: positions 0…L−2 are the inputs, 1…L−1 the targets."""
    loss_mask: torch.Tensor | None = None
    """[n, L−1] weight of each target (1 on assistant tokens, 0 on prompts and padding); None
    trains on every target (pre-training data)."""

    @property
    def inputs(self) -> torch.Tensor:
        return self.tokens[:, :-1]

    @property
    def labels(self) -> torch.Tensor:
        return self.tokens[:, 1:]

    def __len__(self) -> int:
        return self.tokens.shape[0]

    def split(self, size: int) -> list[TokenBatch]:
        masks = self.loss_mask.split(size) if self.loss_mask is not None else None
        return [
            TokenBatch(tokens, masks[i] if masks is not None else None)
            for i, tokens in enumerate(self.tokens.split(size))
        ]

    def to(self, device) -> TokenBatch:
        """These rows on `device`. The copies do not wait for the GPU: a blocking copy to
        a GPU waits for every kernel queued before it, so each micro-batch would stall the host
        until the previous one's backward (or the optimizer step) had run, and the GPU would
        then idle while the host launched the forward; a copy from ordinary host memory is
        staged before the call returns, so the rows may change after it."""
        mask = _to(self.loss_mask, device) if self.loss_mask is not None else None
        return TokenBatch(_to(self.tokens, device), mask)

    def rows(self, indices) -> TokenBatch:
        mask = self.loss_mask[indices] if self.loss_mask is not None else None
        return TokenBatch(self.tokens[indices], mask)

    def with_inputs_padded(self, multiple: int) -> TokenBatch:
        """These rows with inputs a multiple of `multiple` long: the last token repeated as
        inputs whose targets carry no loss. A causal model's outputs at the real positions and
        every masked sum stay as they were, and the kernels run on an even length (mamba_ssm's
        scans and conv take a slower path otherwise): TRL's max_length of 1024 leaves 1023."""
        rows, length = self.tokens.shape
        extra = padded_length(length - 1, multiple) - (length - 1)
        if extra == 0:
            return self
        mask = self.loss_mask
        if mask is None:
            mask = torch.ones(rows, length - 1, device=self.tokens.device)
        return TokenBatch(
            torch.cat([self.tokens, self.tokens[:, -1:].expand(rows, extra)], dim=1),
            torch.cat([mask, mask.new_zeros(rows, extra)], dim=1),
        )

    def target_count(self) -> float:
        """How many targets carry loss: the loss mask's sum, or every target without one."""
        if self.loss_mask is None:
            return float(self.labels.numel())
        return float(self.loss_mask.sum())

    def masked_sum(self, per_token: torch.Tensor) -> torch.Tensor:
        """Sum of a [n, L−1] per-target quantity over the targets that carry loss."""
        if self.loss_mask is None:
            return per_token.float().sum()
        return (per_token.float() * self.loss_mask.to(per_token.device, torch.float32)).sum()

    def masked_mean(self, per_token: torch.Tensor) -> torch.Tensor:
        """Mean of a [n, L−1] per-target quantity over the targets that carry loss."""
        if self.loss_mask is None:
            return per_token.float().mean()
        mask = self.loss_mask.to(per_token.device, torch.float32)
        return (per_token.float() * mask).sum() / mask.sum().clamp(min=1)


@dataclass(frozen=True)
class PreferenceBatch:
    """Pairs for DPO: row i of `chosen` and of `rejected` answer the same prompt; their loss
    masks cover only the responses."""

    chosen: TokenBatch
    rejected: TokenBatch
    reference: torch.Tensor | None = None
    """[n, 2] the reference's log-probabilities of (chosen, rejected), where they were computed
    before training (dpo.precompute_reference); None: the reference runs beside the policy."""

    def __len__(self) -> int:
        return len(self.chosen)

    def split(self, size: int) -> list[PreferenceBatch]:
        count = -(-len(self) // size)
        references = self.reference.split(size) if self.reference is not None else [None] * count
        return [
            PreferenceBatch(c, r, reference)
            for c, r, reference in zip(
                self.chosen.split(size), self.rejected.split(size), references, strict=True
            )
        ]

    def to(self, device) -> PreferenceBatch:
        """These pairs on `device`, copied without waiting for the GPU (`TokenBatch.to`)."""
        reference = _to(self.reference, device) if self.reference is not None else None
        return PreferenceBatch(self.chosen.to(device), self.rejected.to(device), reference)

    def rows(self, indices) -> PreferenceBatch:
        """The pairs at `indices` (so that a batch serves as a dataset of its pairs)."""
        reference = self.reference[indices] if self.reference is not None else None
        return PreferenceBatch(self.chosen.rows(indices), self.rejected.rows(indices), reference)

    def stacked(self) -> TokenBatch:
        """[chosen; rejected] as one batch of 2n rows (one forward pass for both)."""
        return TokenBatch(
            torch.cat([self.chosen.tokens, self.rejected.tokens]),
            torch.cat([self.chosen.loss_mask, self.rejected.loss_mask]),
        )
