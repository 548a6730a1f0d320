"""Distillation's layer loss for one block, with its gradient, as one Triton kernel.

CALD's layer loss is the MSE between the student's and the teacher's block outputs, each passed
through a parameter-free LayerNorm. Through torch (distill/losses.block_mse_and_gradient, the
reference) that is an fp32 copy and a LayerNorm of each output, the MSE, and their backward,
then a cast of the gradient: ~1 GB moved a block of Pythia-1b at 8192 tokens. Here each program
reads one row of both outputs once and writes the row's gradient (in the student's dtype) and
its sum of squared differences; the loss is those sums' total over the element count. With
d = 2w (ŝ − t̂) / (elements), the gradient is LayerNorm's transpose applied to d:
rstd_s (d − mean(d) − ŝ mean(d ŝ)). fp32 arithmetic, one rounding of the gradient.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

LARGEST_ROW = 8192  # one row in one program's registers (16384 spills on sm_90)


@triton.jit
def _normalised(x, inside, columns, eps):
    mean = tl.sum(x, 0) / columns
    centred = tl.where(inside, x - mean, 0.0)
    rstd = 1.0 / tl.sqrt(tl.sum(centred * centred, 0) / columns + eps)
    return centred * rstd, rstd


@triton.jit
def _layer_mse(
    student_ptr, teacher_ptr, grad_ptr, squares_ptr, columns, eps, scale, BLOCK: tl.constexpr
):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    inside = cols < columns
    at = row * columns + cols
    student = tl.load(student_ptr + at, mask=inside, other=0.0).to(tl.float32)
    teacher = tl.load(teacher_ptr + at, mask=inside, other=0.0).to(tl.float32)
    student_hat, rstd = _normalised(student, inside, columns, eps)
    teacher_hat, _ = _normalised(teacher, inside, columns, eps)
    difference = student_hat - teacher_hat  # zero outside the row
    tl.store(squares_ptr + row, tl.sum(difference * difference, 0))
    d = scale * difference
    along = tl.sum(d * student_hat, 0) / columns
    grad = rstd * (d - tl.sum(d, 0) / columns - student_hat * along)
    dtype = grad_ptr.dtype.element_ty
    tl.store(grad_ptr + at, grad.to(dtype, fp_downcast_rounding="rtne"), mask=inside)


def fits(student: torch.Tensor, teacher: torch.Tensor) -> bool:
    """Whether the kernel takes these outputs: equal shapes, rows of at most LARGEST_ROW
    elements, 16- or 32-bit floats."""
    floats = (torch.float32, torch.bfloat16, torch.float16)
    return (
        student.shape == teacher.shape
        and student.numel() > 0
        and student.shape[-1] <= LARGEST_ROW
        and student.dtype in floats
        and teacher.dtype in floats
    )


def layer_mse_and_gradient(
    student: torch.Tensor, teacher: torch.Tensor, weight: float = 1.0, eps: float = 1e-5
) -> tuple[torch.Tensor, torch.Tensor]:
    """(MSE of the LayerNorm-normalised outputs over every element, as an fp32 scalar; the
    gradient of weight × it with respect to `student`, in the student's dtype)."""
    if not fits(student, teacher):
        raise ValueError(
            f"layer_mse_and_gradient takes equal shapes of 16/32-bit floats with rows of at most "
            f"{LARGEST_ROW}; got student {tuple(student.shape)} {student.dtype}, teacher "
            f"{tuple(teacher.shape)} {teacher.dtype}"
        )
    student, teacher = student.detach().contiguous(), teacher.detach().contiguous()
    columns = student.shape[-1]
    rows = student.numel() // columns
    grad = torch.empty_like(student)
    squares = torch.empty(rows, dtype=torch.float32, device=student.device)
    block = triton.next_power_of_2(columns)
    _layer_mse[(rows,)](
        student, teacher, grad, squares, columns, eps, 2.0 * weight / student.numel(),
        BLOCK=block, num_warps=min(16, max(1, block // 256)),
    )  # fmt: skip
    return squares.sum() / student.numel(), grad
