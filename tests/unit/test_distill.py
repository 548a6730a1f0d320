"""Distillation: each loss against a hand computation, the alpha schedule, the config's errors,
and the whole objective's gradient (through megatron's schedule, hooks and attached losses)
against a direct computation with torch's own functions."""

import math

import pytest
import torch
import torch.nn.functional as F
from megatron.core.pipeline_parallel import get_forward_backward_func

from megatron_mamba.config import ParallelConfig, RunPrecision
from megatron_mamba.data.batches import TokenBatch
from megatron_mamba.distill.config import DistillConfig
from megatron_mamba.distill.losses import (
    block_mse,
    block_mse_and_gradient,
    ce_and_logits_kl,
    normalise,
)
from megatron_mamba.distill.objective import Distillation
from megatron_mamba.distill.schedule import layer_alpha
from megatron_mamba.models.build import build_model
from megatron_mamba.models.presets import preset


def test_normalisations_by_hand():
    h = torch.tensor([[1.0, 2.0, 3.0, 6.0]], dtype=torch.float64)
    mean, var = 3.0, ((1 - 3) ** 2 + 1 + 0 + 9) / 4
    expected_ln = (h - mean) / math.sqrt(var + 1e-5)
    torch.testing.assert_close(normalise(h, "layernorm").double(), expected_ln)
    rms = math.sqrt((1 + 4 + 9 + 36) / 4 + 1e-6)
    torch.testing.assert_close(normalise(h, "rmsnorm").double(), h / rms)
    torch.testing.assert_close(normalise(h, "cosine").double(), h / math.sqrt(50))
    torch.testing.assert_close(normalise(h, "none").double(), h)
    with pytest.raises(ValueError, match="'batchnorm' is unknown"):
        normalise(h, "batchnorm")


def test_block_mse_is_the_mean_square_of_the_normalised_difference():
    s, t = torch.randn(5, 2, 8), torch.randn(5, 2, 8)
    expected = ((normalise(s, "rmsnorm") - normalise(t, "rmsnorm")) ** 2).sum() / s.numel()
    torch.testing.assert_close(block_mse(s, t, "rmsnorm"), expected)


@pytest.mark.parametrize("kind", ["layernorm", "rmsnorm", "cosine", "none"])
def test_block_mse_gradient_equals_autograds_even_without_autograd(kind):
    torch.manual_seed(0)
    student = torch.randn(5, 2, 8, dtype=torch.float64, requires_grad=True)
    teacher = torch.randn(5, 2, 8, dtype=torch.float64)
    with torch.no_grad():  # as in a recomputed block's first forward
        mse, ours = block_mse_and_gradient(student, teacher, kind, weight=3.0)
    (reference,) = torch.autograd.grad(3.0 * block_mse(student, teacher, kind), student)
    torch.testing.assert_close(ours, reference)
    torch.testing.assert_close(mse, block_mse(student, teacher, kind).detach())


def test_block_mse_gradient_comes_in_the_students_dtype():
    student = torch.randn(16, 2, 64).bfloat16()
    teacher = torch.randn(16, 2, 64).bfloat16()
    _, grad = block_mse_and_gradient(student, teacher, "layernorm")
    exact = student.float().requires_grad_()
    block_mse(exact, teacher, "layernorm").backward()
    assert grad.dtype == torch.bfloat16
    torch.testing.assert_close(grad.float(), exact.grad, rtol=1e-2, atol=1e-6)


def test_logits_kl_and_its_gradient_match_torch(runtime):
    """The objective's CE and KL (models/logit_losses.py, tested in depth there) on logits
    with megatron's padded columns, against torch on the real vocabulary."""
    torch.manual_seed(0)
    student = torch.randn(3, 4, 16, dtype=torch.float64, requires_grad=True)
    teacher = torch.randn(3, 4, 16, dtype=torch.float64)
    labels = torch.randint(0, 11, (3, 4))
    ce, kl = ce_and_logits_kl(student, teacher, labels, vocab_size=11, temperature=2.0)
    real_s, real_t = student[..., :11], teacher[..., :11]
    reference = F.kl_div(
        F.log_softmax(real_s / 2, -1), F.softmax(real_t / 2, -1), reduction="none"
    ).sum(-1)
    ref_ce = F.cross_entropy(real_s.reshape(-1, 11), labels.reshape(-1), reduction="none")
    torch.testing.assert_close(kl, reference)
    torch.testing.assert_close(ce, ref_ce.view(3, 4))
    weights = torch.rand(3, 4, dtype=torch.float64)
    (ours_grad,) = torch.autograd.grad((kl * weights).sum(), student)
    (ref_grad,) = torch.autograd.grad((reference * weights).sum(), student)
    torch.testing.assert_close(ours_grad, ref_grad)
    assert ce_and_logits_kl(student, teacher, labels, 11, temperature=None)[1] is None


def test_layer_alpha_schedule():
    assert [layer_alpha(s, 10, 15.0, None) for s in (1, 10)] == [15.0, 15.0]
    assert [layer_alpha(s, 10, 15.0, 0.4) for s in (1, 4, 5, 10)] == [15.0, 15.0, 0.0, 0.0]
    assert layer_alpha(1, 10, 0.0, 0.4) == 0.0
    assert [layer_alpha(s, 10, 15.0, None, 3) for s in (3, 4)] == [15.0, 0.0]


def test_a_layer_loss_over_no_block_is_refused(runtime):
    from megatron_mamba.config_io import ConfigError

    model = build_model(preset("tiny-gpt-neox", num_layers=2), ParallelConfig())
    cfg = DistillConfig(teacher="t", alpha_layer_distill_loss=15.0, distill_skip_last=2)
    with pytest.raises(ConfigError, match="distill_skip_last=2 leaves none of the 2 blocks"):
        Distillation(model, model, cfg, 2, total_steps=1, vocab_size=256)


@pytest.mark.parametrize(
    "fields,match",
    [
        ({"alpha_layer_distill_loss": 15.0}, "need distill.teacher"),
        ({"teacher": "t", "alpha_ce_loss": -1.0}, "alpha_ce_loss=-1.0 must be non-negative"),
        ({"teacher": "t", "distill_normalization": "batch"}, "'batch' is unknown"),
        ({"teacher": "t", "layer_distill_until": 1.5}, r"layer_distill_until=1.5 must be in"),
        ({"teacher": "t", "logits_temperature": 0.0}, "logits_temperature=0.0 must be positive"),
        (
            {"teacher": "t", "layer_distill_until": 0.4, "layer_distill_until_step": 9},
            "are both set",
        ),
        ({"teacher": "t", "layer_distill_until_step": -1}, "must be a non-negative integer"),
    ],
)
def test_bad_distill_settings_fail_clearly(fields, match):
    with pytest.raises(ValueError, match=match):
        DistillConfig(**fields)


def _block_outputs(model):
    outputs = []
    handles = [
        layer.register_forward_hook(lambda m, i, o: outputs.append(o[0]))
        for layer in model.decoder.layers
    ]
    return outputs, handles


@pytest.mark.parametrize("recompute", ["none", "full"])
def test_objective_gradient_matches_a_direct_computation(runtime, recompute):
    """CE + 15 · mean block MSE (first 3 of 4 blocks) + 0.5 · KL, by megatron's schedule with
    2 micro-batches, against the same sum written with torch's functions; also with the
    student's blocks recomputed in backward."""
    cfg = preset("tiny-gpt-neox", num_layers=4, layer_pattern="MAMA", vocab_size=256)
    student = build_model(cfg, ParallelConfig(), RunPrecision(recompute=recompute))
    teacher = build_model(preset("tiny-gpt-neox", num_layers=4), ParallelConfig())
    teacher.requires_grad_(False)
    distill = DistillConfig(
        teacher="t", alpha_layer_distill_loss=15.0, alpha_logits_distill_loss=0.5
    )
    objective = Distillation(student, teacher, distill, 4, total_steps=10, vocab_size=256)
    tokens = torch.randint(0, 256, (4, 17))
    objective.begin_step(1, loss_scale=1.0, accumulation=2)
    get_forward_backward_func()(
        forward_step_func=lambda batches, model: objective.forward_step(next(batches), model),
        data_iterator=iter(TokenBatch(tokens).split(2)),
        model=student,
        num_microbatches=2,
        seq_length=16,
        micro_batch_size=4,
    )
    ours = {n: p.grad.clone() for n, p in student.named_parameters()}
    student.zero_grad()
    with torch.no_grad():  # a forward outside the objective (validation) leaves the hooks idle
        student(tokens[:, :-1], None, None)
    objective.remove_hooks()

    total = 0.0
    for micro in tokens.split(2):
        inputs, labels = micro[:, :-1], micro[:, 1:]
        t_blocks, t_handles = _block_outputs(teacher)
        s_blocks, s_handles = _block_outputs(student)
        with torch.no_grad():
            t_logits = teacher(inputs, None, None)
        s_logits = student(inputs, None, None)
        for handle in t_handles + s_handles:
            handle.remove()
        ce = F.cross_entropy(s_logits.flatten(0, 1).float(), labels.flatten())
        layer = (
            sum(
                F.mse_loss(F.layer_norm(s, s.shape[-1:]), F.layer_norm(t, t.shape[-1:]))
                for s, t in zip(s_blocks[:3], t_blocks[:3], strict=True)
            )
            / 3
        )
        kl = (
            F.kl_div(F.log_softmax(s_logits / 2, -1), F.softmax(t_logits / 2, -1), reduction="none")
            .sum(-1)
            .mean()
        )
        total = total + (ce + 15.0 * layer + 0.5 * kl) / 2
    total.backward()
    for name, param in student.named_parameters():
        torch.testing.assert_close(ours[name], param.grad, rtol=1e-4, atol=1e-6, msg=name)
