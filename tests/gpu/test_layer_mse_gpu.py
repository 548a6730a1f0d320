"""On the GPU: distillation's layer loss and its gradient as one kernel (kernels/layer_mse.py)
against a float64 computation of the torch reference (distill/losses.block_mse), and the
objective's entry point (block_mse_and_gradient) taking it only for layernorm."""

import pytest
import torch

from megatron_mamba.distill.losses import block_mse, block_mse_and_gradient

pytestmark = pytest.mark.gpu
DEVICE = "cuda"
pytest.importorskip("triton")  # collected everywhere; the kernel module needs it

from megatron_mamba.kernels.layer_mse import LARGEST_ROW, layer_mse_and_gradient  # noqa: E402

# one rounding of the gradient in its dtype, plus fp32 arithmetic
TOLERANCE = {torch.float32: 1e-5, torch.bfloat16: 2**-7, torch.float16: 2**-10}


def _outputs(shape, dtype, seed=0):
    generator = torch.Generator(device=DEVICE).manual_seed(seed)
    student = torch.randn(shape, device=DEVICE, generator=generator) * 3 + 1
    teacher = torch.randn(shape, device=DEVICE, generator=generator) * 0.5 - 2
    return student.to(dtype), teacher.to(dtype)


def _float64_reference(student, teacher, weight):
    leaf = student.double().requires_grad_()
    loss = block_mse(leaf, teacher.double(), "layernorm")
    (grad,) = torch.autograd.grad(loss * weight, leaf)
    return loss.detach(), grad


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("shape", [(2048, 2, 2048), (37, 3, 2560), (5, 100), (3, 1, LARGEST_ROW)])
def test_loss_and_gradient_match_float64(shape, dtype):
    student, teacher = _outputs(shape, dtype)
    # fp16 runs fold their loss scale into the weight (distill/aux_loss.py): unscaled, a block's
    # gradient of ~1e-6 an element would be subnormal in fp16
    weight = 7.5 * (2**16 if dtype == torch.float16 else 1)
    loss, grad = layer_mse_and_gradient(student, teacher, weight=weight)
    expected_loss, expected_grad = _float64_reference(student, teacher, weight)
    assert loss.dtype == torch.float32 and grad.dtype == dtype and grad.shape == student.shape
    assert abs(loss.double() - expected_loss) / expected_loss < 1e-5
    error = (grad.double() - expected_grad).abs().max() / expected_grad.abs().max()
    assert error < TOLERANCE[dtype], error


def test_a_bf16_teacher_with_an_fp32_student():
    student, _ = _outputs((64, 2, 512), torch.float32)
    _, teacher = _outputs((64, 2, 512), torch.bfloat16, seed=1)
    loss, grad = layer_mse_and_gradient(student, teacher, weight=2.0)
    expected_loss, expected_grad = _float64_reference(student, teacher, 2.0)
    assert abs(loss.double() - expected_loss) / expected_loss < 1e-5
    assert (grad.double() - expected_grad).abs().max() / expected_grad.abs().max() < 1e-5


@pytest.mark.parametrize("kind", ["layernorm", "rmsnorm", "cosine", "none"])
def test_the_objectives_entry_point_follows_the_torch_path(kind, monkeypatch):
    student, teacher = _outputs((256, 2, 1024), torch.bfloat16)
    loss, grad = block_mse_and_gradient(student, teacher, kind, weight=3.0)
    monkeypatch.setenv("MEGATRON_MAMBA_REFERENCE_KERNELS", "1")
    expected_loss, expected_grad = block_mse_and_gradient(student, teacher, kind, weight=3.0)
    torch.testing.assert_close(loss, expected_loss, rtol=1e-5, atol=0)
    error = (grad.float() - expected_grad.float()).abs().max() / expected_grad.float().abs().max()
    assert error < 2**-7, error


def test_shapes_it_cannot_take_are_refused():
    student, teacher = _outputs((4, 2, 64), torch.float32)
    with pytest.raises(ValueError, match=r"got student \(4, 2, 64\).*teacher \(4, 2, 32\)"):
        layer_mse_and_gradient(student, teacher[..., :32])
