"""The CUDA selective-scan backward (kernels/scan_backward_cuda.py) against autograd through the
float64 sequential reference (fp32 and bf16, every tiling, groups, both layouts) and against
mamba_ssm's backward, including sequences past one 2048-position chunk (which start from the
forward's saved states)."""

import pytest
import torch

from tests.gpu.test_selective_scan_bwd_gpu import TOLERANCE, _case, _reference, _relative

pytestmark = pytest.mark.gpu


def _ours(args, y, saved=None, tiling=None):
    from megatron_mamba.kernels.scan_backward_cuda import (
        DEFAULT_TILING,
        RESULTS,
        selective_scan_backward,
    )

    u, delta, A, B, C, D, z, bias, grad = args
    dz = torch.empty_like(z)
    results = selective_scan_backward(
        u, delta, A, B, C, D, z, bias, grad, y, dz, saved, tiling or DEFAULT_TILING
    )
    return dict(zip(RESULTS, results, strict=True)) | {"dz": dz}


@pytest.mark.parametrize("tiling", [(128, 1), (128, 2), (256, 1), (256, 2), (256, 4)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(
    "batch, channels, length, state, groups, rows_layout",
    [(2, 64, 300, 16, 1, True), (1, 48, 77, 16, 2, False), (2, 32, 64, 5, 4, True)],
)
def test_matches_autograd_through_the_float64_reference(
    tiling, dtype, batch, channels, length, state, groups, rows_layout
):
    args = _case(batch, channels, length, state, groups, dtype, rows_layout)
    y, expected, out_z_expected = _reference(*args)
    got = _ours(args, y, tiling=tiling)
    assert _relative(got.pop("out_z"), out_z_expected) < TOLERANCE[dtype]
    errors = {name: _relative(got[name], expected[name]) for name in expected}
    assert max(errors.values()) < TOLERANCE[dtype], errors


@pytest.mark.parametrize("length", [1000, 2048, 4500])
def test_matches_mamba_ssms_backward_past_one_chunk(length):
    selective_scan_cuda = pytest.importorskip("selective_scan_cuda")
    args = _case(2, 256, length, 16, 1, torch.bfloat16, True)
    u, delta, A, B, C, D, z, bias, grad = args
    u = u.contiguous()  # the conv's output
    args = (u, *args[1:])
    y, saved, _ = selective_scan_cuda.fwd(u, delta, A, B, C, D, z, bias, True)
    dz_theirs = torch.empty_like(z)
    theirs = selective_scan_cuda.bwd(
        u, delta, A, B, C, D, z, bias, grad, saved, y, dz_theirs, True, True
    )
    names = ("du", "ddelta", "dA", "dB", "dC", "dD", "ddelta_bias", "out_z")
    theirs = dict(zip(names, theirs[:7] + theirs[8:], strict=True)) | {"dz": dz_theirs}
    ours = _ours(args, y, saved)
    for name, expected in theirs.items():
        assert ours[name].shape == expected.shape, name
        assert _relative(ours[name], expected.double()) < 1e-2, name


def test_a_long_sequence_without_the_saved_states_is_refused():
    args = _case(1, 32, 2049, 4, 1, torch.float32, False)
    y = torch.zeros_like(args[0])
    with pytest.raises(ValueError, match="cannot take u"):
        _ours(args, y)
