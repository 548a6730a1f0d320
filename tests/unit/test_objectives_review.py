"""Review fixes to the training objectives, each against a float64 reference."""

import math
from types import SimpleNamespace

import pytest
import torch

from megatron_mamba.config import ParallelConfig
from megatron_mamba.distill.config import DistillConfig
from megatron_mamba.distill.losses import block_mse
from megatron_mamba.distill.objective import Distillation
from megatron_mamba.models.build import build_model
from megatron_mamba.models.presets import preset
from megatron_mamba.training.dpo import DPOConfig


def test_fp16_layer_loss_gradient_survives_the_cast(runtime):
    """An fp16 block's layer-loss gradient (~1e-8 per element, below fp16's normal range) is
    taken with the step's loss scale folded in, as the main loss's is: scaled only in backward,
    it was flushed to zero."""
    model = build_model(preset("tiny-gpt-neox", num_layers=2), ParallelConfig())
    cfg = DistillConfig(teacher="t", alpha_layer_distill_loss=1.0)
    objective = Distillation(model, model, cfg, 2, total_steps=1, vocab_size=256)
    objective.remove_hooks()
    scale = 2.0**16
    objective.begin_step(1, loss_scale=scale, accumulation=1)
    torch.manual_seed(0)
    teacher = torch.randn(64, 2, 64, dtype=torch.float64) * 1000
    student = (teacher + 300 * torch.randn_like(teacher)).half()
    hidden = student.clone().requires_grad_()
    objective.teacher_blocks[1] = teacher.half()
    objective.in_step = True
    out, _ = objective._attach_layer_loss(SimpleNamespace(layer_number=1), None, (hidden, None))
    (ours,) = torch.autograd.grad(out, hidden, torch.zeros_like(out))

    exact = student.double().requires_grad_()
    loss = block_mse(exact, teacher.half().double(), "layernorm") * scale  # 1 distilled block
    (reference,) = torch.autograd.grad(loss, exact)
    assert reference.abs().max() / scale < 6e-5  # unscaled, below fp16's smallest normal
    error = (ours.double() - reference).norm() / reference.norm()
    assert error < 1e-2, f"relative error {error:.3g}"


@pytest.mark.parametrize(
    "fields,match",
    [
        ({"alpha_ce_loss": math.nan}, "alpha_ce_loss=nan must be non-negative and finite"),
        ({"alpha_layer_distill_loss": math.nan}, "alpha_layer_distill_loss=nan must be"),
        ({"alpha_logits_distill_loss": math.inf}, "alpha_logits_distill_loss=inf must be"),
        ({"logits_temperature": math.inf}, "logits_temperature=inf must be positive and finite"),
    ],
)
def test_non_finite_distill_weights_are_refused(fields, match):
    """A NaN alpha passed `< 0` and made every step's loss NaN; an infinite temperature made
    the KL silently 0."""
    with pytest.raises(ValueError, match=match):
        DistillConfig(teacher="t", **fields)


def test_an_infinite_dpo_beta_is_refused():
    with pytest.raises(ValueError, match="dpo.beta=inf must be positive and finite"):
        DPOConfig(beta=math.inf)
