"""The Triton logit-losses kernel against the torch reference (models/logit_losses.py), which the
CPU tests hold against torch's own functions: losses and kept gradients, fp32 and bf16, with
megatron's padded vocabulary, ignored labels, with and without a teacher."""

import pytest
import torch

from megatron_mamba.models.logit_losses import (
    LogitLosses,
    combine_row_statistics,
    kernel_losses_and_gradients,
    losses_and_gradients,
)

pytestmark = pytest.mark.gpu

VOCAB, PADDED, ROWS = 5000, 5120, 37  # more columns than one kernel block; rows not a power of 2


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("temperature", [None, 1.0, 2.0])
def test_kernel_matches_the_torch_reference(dtype, temperature):
    from megatron_mamba.kernels import logit_losses as kernel

    torch.manual_seed(0)
    logits = (torch.randn(ROWS, PADDED, device="cuda") * 4).to(dtype)
    teacher = (torch.randn(ROWS, PADDED, device="cuda") * 4).to(dtype) if temperature else None
    labels = torch.randint(0, VOCAB, (ROWS,), device="cuda")
    labels[[3, 20]] = -1
    t = temperature or 1.0
    ce, kl, grads = kernel_losses_and_gradients(kernel, logits, teacher, labels, VOCAB, t, True)
    ref_ce, ref_kl, ref_grads = losses_and_gradients(logits, teacher, labels, VOCAB, t, True)
    torch.testing.assert_close(ce, ref_ce.float(), rtol=1e-5, atol=1e-5)
    assert ce[3] == 0 and ce[20] == 0
    if temperature:
        torch.testing.assert_close(kl, ref_kl.float(), rtol=1e-4, atol=1e-5)
    assert len(grads) == len(ref_grads) == (2 if temperature else 1)
    tolerance = {torch.float32: (1e-5, 1e-7), torch.bfloat16: (1e-2, 1e-5)}[dtype]
    for ours, ref in zip(grads, ref_grads, strict=True):
        assert ours.dtype == dtype
        torch.testing.assert_close(ours.float(), ref.float(), rtol=tolerance[0], atol=tolerance[1])
        assert (ours[:, VOCAB:] == 0).all()
    without = kernel_losses_and_gradients(kernel, logits, teacher, labels, VOCAB, t, False)
    torch.testing.assert_close(without[0], ce, rtol=0, atol=0)
    assert without[2] == []


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("temperature", [None, 2.0])
@pytest.mark.parametrize("ranks", [2, 3])
def test_kernels_over_column_slices_match_the_whole_vocabulary(dtype, temperature, ranks):
    """TP > 1 without its all-gather: each rank's slice of columns through `row_statistics`,
    pooled, then `gradients` per slice, against the whole vocabulary on one rank. With 3 ranks
    of 1707 columns the last holds 1586 real ones and the padding; labels fall in every slice."""
    from megatron_mamba.kernels import logit_losses as kernel

    torch.manual_seed(2)
    padded = 5121 if ranks == 3 else PADDED
    local = padded // ranks
    logits = (torch.randn(ROWS, padded, device="cuda") * 4).to(dtype)
    teacher = (torch.randn(ROWS, padded, device="cuda") * 4).to(dtype) if temperature else None
    labels = torch.randint(0, VOCAB, (ROWS,), device="cuda")
    labels[[0, 1, 2]] = torch.tensor([0, local, VOCAB - 1], device="cuda")
    labels[5] = -1
    t = temperature or 1.0
    slices = [slice(r * local, (r + 1) * local) for r in range(ranks)]
    reals = [max(0, min(local, VOCAB - r * local)) for r in range(ranks)]
    stats = torch.stack(
        [
            kernel.row_statistics(
                logits[:, part],
                teacher[:, part] if teacher is not None else None,
                labels,
                part.start,
                real,
                t,
            )
            for part, real in zip(slices, reals, strict=True)
        ]
    )
    ce, kl, lse = combine_row_statistics(stats)
    ce = ce.masked_fill(labels < 0, 0.0)
    grads = [
        kernel.gradients(
            logits[:, part],
            teacher[:, part] if teacher is not None else None,
            labels,
            part.start,
            real,
            lse,
            t,
        )
        for part, real in zip(slices, reals, strict=True)
    ]
    ref_ce, ref_kl, ref_grads = losses_and_gradients(logits, teacher, labels, VOCAB, t, True)
    torch.testing.assert_close(ce, ref_ce.float(), rtol=1e-5, atol=1e-5)
    if temperature:
        torch.testing.assert_close(kl, ref_kl.float(), rtol=1e-4, atol=1e-5)
    for k, ref in enumerate(ref_grads):
        ours = torch.cat([g[k] for g in grads], dim=1)
        assert ours.dtype == dtype
        torch.testing.assert_close(
            ours.float(), ref[:, : ranks * local].float(), rtol=1e-2, atol=1e-6
        )


def test_autograd_on_gpu_runs_the_kernel_and_matches_cpu():
    torch.manual_seed(1)
    logits = torch.randn(2, 9, PADDED) * 3
    teacher = torch.randn(2, 9, PADDED) * 3
    labels = torch.randint(0, VOCAB, (2, 9))
    results = []
    for device in ("cpu", "cuda"):
        student = logits.to(device, copy=True).requires_grad_()  # a fresh leaf on each device
        ce, kl = LogitLosses.apply(student, teacher.to(device), labels.to(device), VOCAB, 2.0, None)
        (ce.sum() + 0.5 * kl.sum()).backward()
        results.append([x.detach().cpu() for x in (ce, kl, student.grad)])
    for gpu, cpu in zip(results[1], results[0], strict=True):
        torch.testing.assert_close(gpu, cpu, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("terms", [1, 2])
def test_backward_scales_rows_in_one_rounding(dtype, terms):
    from megatron_mamba.kernels import logit_losses as kernel

    torch.manual_seed(2)
    grads = [torch.randn(ROWS, PADDED + 3, device="cuda", dtype=torch.float64) for _ in range(2)]
    scales = [torch.randn(ROWS, 1, device="cuda", dtype=torch.float64) for _ in range(2)]
    scales[0][5] = 0.0  # an ignored label's row
    args = [x for pair in list(zip(grads, scales, strict=True))[:terms] for x in pair]
    got = kernel.scaled_rows(*(x.to(dtype) if x.shape[1] > 1 else x.float() for x in args))
    rounded = [x.to(dtype).double() if x.shape[1] > 1 else x.float().double() for x in args]
    want = sum(rounded[i] * rounded[i + 1] for i in range(0, len(rounded), 2))
    assert got.dtype == dtype
    assert (got[5] == 0).all() or terms == 2
    # fp32 against float64 sums: the two may round a sum near a boundary apart, by one unit
    eps = 1e-6 if dtype == torch.float32 else 2**-7
    torch.testing.assert_close(got.double(), want.to(dtype).double(), rtol=eps, atol=1e-6)
