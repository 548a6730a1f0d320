"""On the GPU: the gated RMSNorm kernel and both Mamba mixers on mamba_ssm/causal_conv1d kernels
against the same modules on the pure-PyTorch references, forward and gradients, fp32 and bf16."""

import pytest
import torch
from einops import rearrange

from megatron_mamba import kernels
from megatron_mamba.kernels import reference
from megatron_mamba.runtime import init_runtime
from tests.helpers.autograd_graph import autograd_nodes
from tests.helpers.mamba_tiny import native_mixer, randomize, tiny_model_config

pytestmark = pytest.mark.gpu

TOLERANCE = {torch.float32: 1e-4, torch.bfloat16: 3e-2}


@pytest.fixture(scope="module")
def runtime():
    return init_runtime(seed=0)


def rel_err(got, expected) -> float:
    return float((got.float() - expected.float()).norm() / expected.float().norm())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gated_rms_norm_kernel(dtype):
    torch.manual_seed(0)
    x = torch.randn(2, 33, 128, device="cuda", dtype=dtype, requires_grad=True)
    z = torch.randn(2, 33, 128, device="cuda", dtype=dtype, requires_grad=True)
    w = torch.randn(128, device="cuda", dtype=dtype, requires_grad=True)
    assert kernels.use_fused(x)
    fused = kernels.gated_rms_norm(x, z, w, 1e-5, group_size=32)
    ref = reference.gated_rms_norm(x, z, w, 1e-5, group_size=32)
    assert rel_err(fused, ref) <= TOLERANCE[dtype]
    g_fused = torch.autograd.grad(fused.float().square().sum(), (x, z, w))
    g_ref = torch.autograd.grad(ref.float().square().sum(), (x, z, w))
    for a, b in zip(g_fused, g_ref, strict=True):
        assert rel_err(a, b) <= TOLERANCE[dtype]


CASES = [
    ("mamba1", dict(layout="classic")),
    ("mamba1", dict(layout="attention", d_state=8)),
    ("mamba2", dict(layout="classic", d_state=16, head_dim=16, groups=2, chunk_size=16)),
    ("mamba2", dict(layout="attention", chunk_size=16)),
]


def _forward_and_grads(mixer, u):
    out, _ = mixer(u)
    grads = torch.autograd.grad(out.float().square().sum(), [u, *mixer.parameters()])
    return [out, *grads]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("kind,mamba", CASES, ids=[f"{k}_{m['layout']}" for k, m in CASES])
def test_mixer_on_fused_kernels_matches_reference(runtime, monkeypatch, kind, mamba, dtype):
    """Both paths against the reference in float64. mamba_ssm's Triton kernels multiply in
    TF32 (bf16 inputs in bf16), so the fused path in fp32 is compared with the reference whose
    matmuls also run in TF32, in bf16 with the bf16 reference: it may be at most 3× further off
    (TF32 rounding cancels badly in sums such as A_log's gradient; a fault would not stay
    within 3× of the same rounding in another computation)."""
    _check_fused_against_reference(monkeypatch, kind, mamba, dtype)


ONE_FUNCTION = {
    "classic": (dict(layout="classic"), "_Mamba1MixerBackward"),
    "classic-bias": (dict(layout="classic", proj_bias=True), "_Mamba1MixerBackward"),
    "grouped": (dict(layout="attention", d_state=8), "_GroupedMamba1MixerBackward"),
    # our CUDA selective-scan backward (kernels/scan_backward_cuda.py) inside both
    "classic-cuda-bwd": (dict(layout="classic"), "_Mamba1MixerBackward"),
    "grouped-cuda-bwd": (dict(layout="attention", d_state=8), "_GroupedMamba1MixerBackward"),
}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("case", ONE_FUNCTION)
def test_mamba1_one_function_matches_reference(runtime, monkeypatch, case, dtype):
    """The Mamba1 mixer as one function in the [channels, (b l)] layout
    (kernels/mamba1_fused.py), both layouts by default at TP=1: the same check, and the
    function is what ran."""
    from megatron_mamba.kernels import scan_backward_cuda

    calls = []
    # our CUDA backward is the default; the other cases keep mamba_ssm's
    monkeypatch.setenv("MEGATRON_MAMBA_CUDA_SCAN_BWD", "1" if case.endswith("cuda-bwd") else "0")
    ours = scan_backward_cuda.selective_scan_backward

    def counted(*args, **kwargs):
        calls.append(1)
        return ours(*args, **kwargs)

    monkeypatch.setattr(scan_backward_cuda, "selective_scan_backward", counted)
    mamba, node = ONE_FUNCTION[case]
    mixer = native_mixer("mamba1", tiny_model_config(**mamba)).cuda()
    out, _ = mixer(torch.randn(16, 2, 64, device="cuda", requires_grad=True))
    assert node in autograd_nodes(out)
    _check_fused_against_reference(monkeypatch, "mamba1", mamba, dtype)
    assert bool(calls) == case.endswith("cuda-bwd")  # the backward asked for is what ran


def _check_fused_against_reference(monkeypatch, kind, mamba, dtype):
    config = tiny_model_config(**mamba)
    mixer = native_mixer(kind, config)
    randomize(mixer)
    torch.manual_seed(1)
    u32 = torch.randn(40, 2, 64, device="cuda")
    names = ["output", "input", *(n for n, _ in mixer.named_parameters())]

    def run(fused: bool, dt: torch.dtype, tf32: bool = False):
        monkeypatch.setenv("MEGATRON_MAMBA_REFERENCE_KERNELS", "0" if fused else "1")
        monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", tf32)
        monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", tf32)
        module = native_mixer(kind, config)
        module.load_state_dict(mixer.state_dict())
        module = module.to("cuda", dt)
        u = u32.to(dt).requires_grad_()
        assert kernels.use_fused(u) == fused
        return _forward_and_grads(module, u)

    truth = run(False, torch.float64)
    fused = run(True, dtype)
    reference = run(False, dtype, tf32=dtype == torch.float32)
    floor = 1e-4 if dtype == torch.float32 else 2e-2
    for name, a, r, b in zip(names, fused, reference, truth, strict=True):
        fused_error, reference_error = rel_err(a, b), rel_err(r, b)
        print(f"{kind} {mamba} {dtype} {name}: fused {fused_error:.2e} ref {reference_error:.2e}")
        assert fused_error <= max(3 * reference_error, floor), (name, fused_error, reference_error)


def test_decode_on_gpu_matches_full_forward(runtime):
    mixer = native_mixer("mamba2", tiny_model_config("attention", chunk_size=16))
    randomize(mixer)
    mixer = mixer.cuda()
    u = torch.randn(24, 2, 64, device="cuda")
    with torch.no_grad():
        (full, _), _ = mixer.forward_stateful(u, None, return_state=False)
        (first, _), state = mixer.forward_stateful(u[:10], None)
        pieces = [first]
        for t in range(10, 24):
            (out, _), state = mixer.forward_stateful(u[t : t + 1], state)
            pieces.append(out)
    assert rel_err(torch.cat(pieces), full) <= 1e-3  # chunked vs stepwise SSD, TF32 inside
    assert rearrange(full, "l b d -> b l d").isfinite().all()


def test_a_parallel_residual_block_hands_the_one_function_mixer_batch_first(runtime, monkeypatch):
    """GPTNeoX's two LayerNorms write the one-function Mamba1 mixer's input batch-first (and
    read its gradient so) and the residual sum reads the mixer's output in place: the same
    logits and gradients (fp32) as with the copies this saves, and three copy kernels fewer a
    layer."""
    from torch.profiler import ProfilerActivity, profile

    from megatron_mamba.config import ParallelConfig
    from megatron_mamba.kernels import layer_norms, residual_sum, row_layout
    from megatron_mamba.models.build import build_model
    from megatron_mamba.models.mamba1 import Mamba1Mixer
    from megatron_mamba.models.presets import preset

    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    cfg = preset("tiny-gpt-neox", layer_pattern="MM", mamba={"layout": "classic"})
    model = build_model(cfg, ParallelConfig()).cuda()
    tokens = torch.randint(0, cfg.vocab_size, (3, 40), device="cuda")

    def step():
        model.zero_grad()
        logits = model(tokens, None, None)
        logits.square().mean().backward()
        return logits.detach(), [p.grad.clone() for p in model.parameters() if p.grad is not None]

    results = []
    handing_off = Mamba1Mixer.wants_batch_first
    for handed_off in (False, True):  # first as before: the mixer's input and output copied
        monkeypatch.setattr(
            Mamba1Mixer, "wants_batch_first", handing_off if handed_off else lambda self, x: False
        )
        rows = row_layout.rows_in_place if handed_off else row_layout.copied_rows
        for module in (layer_norms, residual_sum):
            monkeypatch.setattr(module, "rows_in_place", rows)
        step()  # kernels compiled before profiling
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            logits, grads = step()
            torch.cuda.synchronize()
        copies = sum(e.count for e in prof.key_averages() if "copy" in e.key.lower())
        results.append((logits, grads, copies))
    (want, want_grads, copies_before), (got, got_grads, copies_after) = results
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    for g, w in zip(got_grads, want_grads, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-5)
    assert copies_after <= copies_before - 3 * cfg.num_layers, (copies_before, copies_after)
