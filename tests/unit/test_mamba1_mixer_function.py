"""The classic Mamba1 mixer as one function in the [channels, (b l)] layout
(kernels/mamba1_fused.py), run on CPU over stand-ins for its CUDA kernels that compute the
references (tests/helpers/fake_mamba_kernels.py): its output and every gradient in float64 against
the mixer's composed path (separate conv, x_proj, scan, out_proj on the references), classic
and grouped (MambaInLlama's) layouts, with and without in_proj's and out_proj's biases."""

import importlib

import pytest
import torch
from einops import rearrange

from tests.helpers import fake_mamba_kernels
from tests.helpers.mamba_tiny import native_mixer, randomize, tiny_model_config

CASES = {
    "classic": dict(layout="classic", proj_bias=False),
    "classic-bias": dict(layout="classic", proj_bias=True),
    "grouped-gqa": dict(layout="attention", d_state=8),  # x and B repeated twice
    "grouped-neox-bias": dict(layout="attention", arch="gpt_neox", proj_bias=True),
}


@pytest.mark.parametrize("case", CASES)
def test_one_function_matches_the_composed_mixer(runtime, monkeypatch, case):
    fake_mamba_kernels.install(monkeypatch)
    one_function = importlib.import_module("megatron_mamba.kernels.mamba1_fused").mamba1_mixer
    mixer = native_mixer("mamba1", tiny_model_config(**CASES[case])).double()
    randomize(mixer)
    assert (mixer.in_proj.bias is not None) == CASES[case].get("proj_bias", False)
    torch.manual_seed(0)
    hidden = torch.randn(24, 3, mixer.dims.d_model, dtype=torch.float64)
    params = list(mixer.parameters())

    def run(path):
        u = hidden.clone().requires_grad_()
        out = path(u)
        grads = torch.autograd.grad(out.square().sum(), [u, *params])
        return [out, *grads]

    def composed(u):
        (out, out_bias), _ = mixer.forward_stateful(u, None, return_state=False)
        return out if out_bias is None else out + out_bias

    def whole(u):
        return rearrange(one_function(rearrange(u, "s b h -> b s h"), mixer), "b s h -> s b h")

    # Both paths take A, D and dt's bias in fp32 (as the kernels do): agreement to ~1e-8 of each
    # tensor's largest entry; a mis-wired product or layout is off by its own size.
    names = ["output", "input", *(n for n, _ in mixer.named_parameters())]
    for name, got, want in zip(names, run(whole), run(composed), strict=True):
        scale = want.abs().max().item()
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-7 * scale, msg=name)


@pytest.mark.parametrize("case", ["classic", "grouped-gqa"])
def test_both_layouts_take_the_function_by_default_on_one_rank(runtime, monkeypatch, case):
    """At TP=1 both layouts go through the one function without the pending switch (their GPU
    tests have run); the mixer's forward is what routes them."""
    calls = fake_mamba_kernels.route_mamba1_mixer(monkeypatch)
    monkeypatch.setenv("MEGATRON_MAMBA_PENDING_KERNELS", "0")
    mixer = native_mixer("mamba1", tiny_model_config(**CASES[case])).double()
    mixer(torch.randn(24, 3, mixer.dims.d_model, dtype=torch.float64))
    assert calls[0] == 1
