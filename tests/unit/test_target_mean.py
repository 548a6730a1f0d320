"""Masked losses are means over every loss-carrying target of the step, however the global batch
is split into micro-batches: CE (SFT) and distillation's CE + KL, values and gradients through
megatron's schedule, against torch's functions over the whole batch at once."""

import pytest
import torch
import torch.nn.functional as F
from megatron.core.pipeline_parallel import get_forward_backward_func

from megatron_mamba.config import ParallelConfig
from megatron_mamba.data.batches import TokenBatch
from megatron_mamba.distill.config import DistillConfig
from megatron_mamba.distill.objective import Distillation
from megatron_mamba.models.build import build_model
from megatron_mamba.models.presets import preset
from megatron_mamba.training.objective import LanguageModelling

ROWS, SEQ = 4, 16


def _batch() -> TokenBatch:
    """Rows whose answers differ in length: 1, 15, 4 and 9 targets carry loss."""
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, 256, (ROWS, SEQ + 1), generator=g)
    mask = torch.zeros(ROWS, SEQ)
    for row, (start, count) in enumerate([(15, 1), (1, 15), (6, 4), (3, 9)]):
        mask[row, start : start + count] = 1
    return TokenBatch(tokens, mask)


def _step(objective, model, batch: TokenBatch, micro: int):
    """One step's (reported loss, gradients) with micro-batches of `micro` rows."""
    model.zero_grad()
    accumulation = ROWS // micro
    objective.begin_step(1, 1.0, accumulation, batch)
    records = get_forward_backward_func()(
        forward_step_func=lambda batches, m: objective.forward_step(next(batches), m),
        data_iterator=iter(batch.split(micro)),
        model=model,
        num_microbatches=accumulation,
        seq_length=SEQ,
        micro_batch_size=micro * objective.micro_batch_factor,
    )
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    return objective.total(objective.parts(records)), grads


def _masked_mean(per_token: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (per_token * mask).sum() / mask.sum()


def _check(objective, model, batch, reference_loss):
    model.zero_grad()
    reference_loss.backward()
    expected = {n: p.grad.clone() for n, p in model.named_parameters()}
    for micro in (1, 2, 4):
        loss, grads = _step(objective, model, batch, micro)
        assert loss == pytest.approx(reference_loss.detach().item(), rel=1e-5), (
            f"micro-batch {micro}"
        )
        for name, grad in grads.items():
            torch.testing.assert_close(grad, expected[name], rtol=1e-4, atol=1e-6, msg=name)


def test_sft_loss_is_the_mean_over_the_steps_assistant_targets(runtime):
    model = build_model(preset("tiny-gpt-neox", num_layers=2), ParallelConfig())
    batch = _batch()
    logits = model(batch.inputs, None, None)
    ce = F.cross_entropy(logits.flatten(0, 1), batch.labels.flatten(), reduction="none")
    _check(
        LanguageModelling(runtime.device),
        model,
        batch,
        _masked_mean(ce.view(ROWS, SEQ), batch.loss_mask),
    )


def _distillation(cfg: DistillConfig):
    """The objective over a 2-layer hybrid student and its attention teacher, the batch, and
    the reference's inputs: student and teacher logits and the per-target CE."""
    student = build_model(
        preset("tiny-gpt-neox", num_layers=2, layer_pattern="MA"), ParallelConfig()
    )
    teacher = build_model(preset("tiny-gpt-neox", num_layers=2), ParallelConfig())
    teacher.requires_grad_(False)
    objective = Distillation(student, teacher, cfg, 2, total_steps=1, vocab_size=256)
    batch = _batch()
    s_logits = student(batch.inputs, None, None)
    with torch.no_grad():
        t_logits = teacher(batch.inputs, None, None)
    ce = F.cross_entropy(s_logits.flatten(0, 1), batch.labels.flatten(), reduction="none")
    return objective, student, batch, s_logits, t_logits, ce


def test_distillation_ce_and_kl_are_means_over_the_steps_targets(runtime):
    cfg = DistillConfig(teacher="t", alpha_layer_distill_loss=0.0, alpha_logits_distill_loss=0.5)
    objective, student, batch, s_logits, t_logits, ce = _distillation(cfg)
    kl = F.kl_div(
        F.log_softmax(s_logits / 2, -1),
        F.log_softmax(t_logits / 2, -1),
        reduction="none",
        log_target=True,
    ).sum(-1)
    mask = batch.loss_mask
    reference = _masked_mean(ce.view(ROWS, SEQ), mask) + 0.5 * _masked_mean(kl, mask)
    _check(objective, student, batch, reference)


def test_distillation_kl_as_batchmean_is_torchs(runtime):
    """MambaInLlama's reduction: the KL summed over every position of a row (prompt included),
    averaged over the step's rows, as torch's kl_div(reduction="batchmean") over [rows, ...]."""
    cfg = DistillConfig(
        teacher="t",
        alpha_layer_distill_loss=0.0,
        alpha_logits_distill_loss=0.1,
        logits_temperature=1.0,
        logits_kl_reduction="batchmean",
    )
    objective, student, batch, s_logits, t_logits, ce = _distillation(cfg)
    kl = F.kl_div(
        F.log_softmax(s_logits, -1),
        F.log_softmax(t_logits, -1),
        reduction="batchmean",
        log_target=True,
    )
    reference = _masked_mean(ce.view(ROWS, SEQ), batch.loss_mask) + 0.1 * kl
    _check(objective, student, batch, reference)


def test_inputs_padded_to_a_multiple_leave_the_loss_and_gradients(runtime):
    """13 inputs a row run as 16 (the added targets carry no loss), masked or not, through a
    hybrid: the same loss and gradients as unpadded."""
    model = build_model(preset("tiny-gpt-neox", num_layers=2, layer_pattern="MA"), ParallelConfig())
    g = torch.Generator().manual_seed(3)
    tokens = torch.randint(0, 256, (ROWS, 14), generator=g)
    for mask in (None, (torch.rand(ROWS, 13, generator=g) < 0.5).float()):
        results = []
        for multiple in (1, 8):
            objective = LanguageModelling(runtime.device)
            objective.input_multiple = multiple
            results.append(_step(objective, model, TokenBatch(tokens, mask), 2))
        (want, want_grads), (got, got_grads) = results
        assert got == pytest.approx(want, rel=1e-6)
        for name, grad in got_grads.items():
            torch.testing.assert_close(grad, want_grads[name], rtol=1e-5, atol=1e-7, msg=name)
