"""The chunked one-rank logit losses against torch's own functions in float64: values, gradients
under arbitrary per-token weights, megatron's padded vocabulary, ignored labels, chunking."""

import pytest
import torch
import torch.nn.functional as F

from megatron_mamba.models import logit_losses
from megatron_mamba.models.logit_losses import LogitLosses, cross_entropy

VOCAB, PADDED = 11, 16


def _reference(student, teacher, labels, temperature):
    real_s, real_t = student[..., :VOCAB], teacher[..., :VOCAB]
    ce = F.cross_entropy(
        real_s.reshape(-1, VOCAB), labels.reshape(-1), reduction="none", ignore_index=-1
    ).view(labels.shape)
    kl = F.kl_div(
        F.log_softmax(real_s / temperature, -1),
        F.log_softmax(real_t / temperature, -1),
        reduction="none",
        log_target=True,
    ).sum(-1)
    return ce, kl


@pytest.fixture(params=[1, 2**25], ids=["chunk of 1 row", "one chunk"])
def chunk(request, monkeypatch):
    monkeypatch.setattr(logit_losses, "CHUNK_ELEMENTS", request.param)


def test_values_and_gradients_match_torch(chunk):
    torch.manual_seed(0)
    student = torch.randn(3, 5, PADDED, dtype=torch.float64, requires_grad=True)
    teacher = torch.randn(3, 5, PADDED, dtype=torch.float64)
    labels = torch.randint(0, VOCAB, (3, 5))
    labels[1, 2] = -1
    ce, kl = LogitLosses.apply(student, teacher, labels, VOCAB, 2.0, None)
    ref_ce, ref_kl = _reference(student, teacher, labels, 2.0)
    torch.testing.assert_close(ce.double(), ref_ce)
    torch.testing.assert_close(kl.double(), ref_kl)
    assert ce[1, 2] == 0
    w_ce, w_kl = torch.rand(3, 5, dtype=torch.float64), torch.rand(3, 5, dtype=torch.float64)
    (ours,) = torch.autograd.grad((ce * w_ce).sum() + (kl * w_kl).sum(), student)
    (ref,) = torch.autograd.grad((ref_ce * w_ce).sum() + (ref_kl * w_kl).sum(), student)
    torch.testing.assert_close(ours, ref)
    assert (ours[..., VOCAB:] == 0).all()


def test_gradient_of_one_loss_alone(chunk):
    torch.manual_seed(1)
    student = torch.randn(2, 4, PADDED, dtype=torch.float64, requires_grad=True)
    teacher = torch.randn(2, 4, PADDED, dtype=torch.float64)
    labels = torch.randint(0, VOCAB, (2, 4))
    _, kl = LogitLosses.apply(student, teacher, labels, VOCAB, 1.0, None)
    (ours,) = torch.autograd.grad(kl.sum(), student)
    (ref,) = torch.autograd.grad(_reference(student, teacher, labels, 1.0)[1].sum(), student)
    torch.testing.assert_close(ours, ref)


def test_bf16_logits_get_a_bf16_gradient_close_to_fp32(runtime):
    torch.manual_seed(2)
    student = torch.randn(2, 6, PADDED) * 4
    labels = torch.randint(0, VOCAB, (2, 6))
    low = student.bfloat16().requires_grad_()
    ce = cross_entropy(low, labels, VOCAB)
    ref = F.cross_entropy(low.float()[..., :VOCAB].reshape(-1, VOCAB), labels.reshape(-1))
    torch.testing.assert_close(ce.mean(), ref)
    (grad,) = torch.autograd.grad(ce.mean(), low)
    assert grad.dtype == torch.bfloat16
    exact = low.float().detach().requires_grad_()
    F.cross_entropy(exact[..., :VOCAB].reshape(-1, VOCAB), labels.reshape(-1)).backward()
    torch.testing.assert_close(grad.float(), exact.grad, rtol=1e-2, atol=1e-4)


def test_fp32_logits_are_left_as_they_were():
    student = torch.randn(2, 3, PADDED, requires_grad=True)
    teacher = torch.randn(2, 3, PADDED)
    before = student.detach().clone(), teacher.clone()
    LogitLosses.apply(student, teacher, torch.zeros(2, 3, dtype=torch.long), VOCAB, 2.0, None)
    torch.testing.assert_close((student.detach(), teacher), before, rtol=0, atol=0)


def test_without_a_gradient_nothing_is_kept():
    student = torch.randn(2, 3, PADDED)
    ce, kl = LogitLosses.apply(student, None, torch.zeros(2, 3, dtype=torch.long), VOCAB, 1.0, None)
    assert kl is None and not ce.requires_grad


def test_bf16_distillation_gradient_close_to_fp32():
    torch.manual_seed(3)
    student, teacher = torch.randn(2, 6, PADDED) * 4, torch.randn(2, 6, PADDED) * 4
    labels = torch.randint(0, VOCAB, (2, 6))
    weights = torch.rand(2, 6), torch.rand(2, 6)

    def gradient(logits, losses):
        ce, kl = losses(logits)
        (grad,) = torch.autograd.grad((ce * weights[0]).sum() + (kl * weights[1]).sum(), logits)
        return grad

    low = student.bfloat16().requires_grad_()
    ours = gradient(
        low, lambda s: LogitLosses.apply(s, teacher.bfloat16(), labels, VOCAB, 2.0, None)
    )
    exact = low.detach().float().requires_grad_()
    ref = gradient(exact, lambda s: _reference(s, teacher.bfloat16().float(), labels, 2.0))
    assert ours.dtype == torch.bfloat16
    torch.testing.assert_close(ours.float(), ref, rtol=1e-2, atol=1e-3)
