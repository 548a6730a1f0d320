"""Direct preference optimisation (Rafailov et al.), the sigmoid loss as TRL's DPOTrainer
computes it, against a frozen reference model (the SFT model).

For each pair, log π(y|x) is the sum of the response tokens' log-probabilities. With
r = β·(log π − log π_ref), the loss is −log σ(r_chosen − r_rejected), averaged over pairs.
Logged, as TRL does: the rewards, their margin, the share of pairs whose chosen reward is
higher (reward accuracy), and the policy's log-probabilities.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from megatron.core import parallel_state as ps

from megatron_mamba.data.batches import INPUT_MULTIPLE, PreferenceBatch, TokenBatch
from megatron_mamba.training.paired import forward_pair

STATISTICS = (
    "reward_chosen",
    "reward_rejected",
    "reward_margin",
    "reward_accuracy",
    "logp_chosen",
    "logp_rejected",
)
"""Logged beside the loss; not losses themselves."""
LOGGED = ("dpo", *STATISTICS)


@dataclass
class DPOConfig:
    beta: float = 0.1
    """Strength of the KL penalty to the reference (Zephyr: 0.01 for 1 epoch, 0.1 for 3)."""
    reference: str | None = None
    """The frozen reference's weights (a checkpoint directory or a file of whole tensors), in
    the policy's layout; None means train.init_from (the SFT model the policy starts from)."""
    precompute_reference: bool = False
    """Compute the reference's log-probabilities of every pair in one forward pass over the
    data before the first step, then free the reference (TRL's precompute_ref_log_probs): each
    step runs the policy alone, in less memory. The pass is paid at every (re)start; a run of
    several epochs saves a reference forward per pair in each epoch after the first."""

    def __post_init__(self) -> None:
        if not (math.isfinite(self.beta) and self.beta > 0):
            raise ValueError(f"dpo.beta={self.beta} must be positive and finite")


def sequence_logps(per_token_ce: torch.Tensor, loss_mask: torch.Tensor) -> torch.Tensor:
    """Σ log p over each row's masked (response) targets, in fp32."""
    return -(per_token_ce.float() * loss_mask.float()).sum(-1)


def per_token_ce(model, rows: TokenBatch):
    """The model's forward on `rows` with their labels: on the last pipeline stage the
    per-target cross-entropy [n, L−1] over the real vocabulary whatever the TP padding
    (LanguageModel's loss, from the [s, b, vocabulary] logits as they are: no [b, s] copy of
    them either way), elsewhere the hidden states to send on."""
    return model(rows.inputs, None, None, labels=rows.labels)


def dpo_loss(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    reference_chosen: torch.Tensor,
    reference_rejected: torch.Tensor,
    beta: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-pair losses and the (detached) chosen and rejected rewards."""
    chosen = beta * (policy_chosen - reference_chosen)
    rejected = beta * (policy_rejected - reference_rejected)
    return -F.logsigmoid(chosen - rejected), chosen.detach(), rejected.detach()


class PreferenceOptimisation:
    """The trainer's DPO objective; the reference runs beside the policy through the pipeline,
    or (`reference` None) its log-probabilities come with the batch, computed before training."""

    detailed = True
    rows_per_item = 2  # a pair is two sequences
    input_multiple = INPUT_MULTIPLE

    def __init__(self, policy, reference, cfg: DPOConfig):
        self.policy, self.reference, self.cfg = policy, reference, cfg
        # chosen and rejected rows of the policy, and of the reference where it runs
        self.micro_batch_factor = 2 if reference is None else 4

    def begin_step(self, step: int, loss_scale: float, accumulation: int, batch=None) -> None:
        pass  # every micro-batch holds as many pairs: the mean of their means is the step's

    def forward_step(self, batch: PreferenceBatch, model):
        rows = batch.stacked().with_inputs_padded(self.input_multiple)
        labels = {"labels": rows.labels}
        if self.reference is not None:
            send, outputs = forward_pair(
                self.policy, self.reference, rows.inputs, model, labels, labels
            )
        elif batch.reference is None:
            raise ValueError("DPO without a reference model needs its log-probabilities")
        else:
            send = per_token_ce(model, rows)
            outputs = (send,) if ps.is_pipeline_last_stage() else None
        if outputs is None:
            return send, None
        pairs = len(batch)

        def loss_func(outputs):
            policy = sequence_logps(outputs[0], rows.loss_mask)
            if batch.reference is None:
                reference = sequence_logps(outputs[1], rows.loss_mask)
            else:  # [chosen; rejected], as the rows are stacked
                reference = batch.reference.t().reshape(-1).to(policy.dtype)
            losses, chosen, rejected = dpo_loss(
                policy[:pairs],
                policy[pairs:],
                reference[:pairs],
                reference[pairs:],
                self.cfg.beta,
            )
            loss = losses.mean()
            logged = {
                "dpo": loss.detach().clone(),  # the schedule divides `loss` in place
                "reward_chosen": chosen.mean(),
                "reward_rejected": rejected.mean(),
                "reward_margin": (chosen - rejected).mean(),
                "reward_accuracy": (chosen > rejected).float().mean(),
                "logp_chosen": policy[:pairs].detach().mean(),
                "logp_rejected": policy[pairs:].detach().mean(),
            }
            return loss, logged

        return outputs, loss_func

    def parts(self, micro_batch_records: list[dict]) -> dict[str, float]:
        """Means over the step's micro-batches; zeros on stages other than the last."""
        count = max(len(micro_batch_records), 1)
        return {name: sum(float(r[name]) for r in micro_batch_records) / count for name in LOGGED}

    def total(self, parts: dict[str, float]) -> float:
        return parts["dpo"]
