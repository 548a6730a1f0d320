"""Our Mamba mixers against transformers' MambaMixer / Mamba2Mixer (slow paths) with copied
weights, MambaInLlama's grouped Mamba1 against a float64 transcription of its forward, and
chunked decoding against the full forward."""

import pytest
import torch
import torch.nn.functional as F
from einops import rearrange

from megatron_mamba.models.mamba_dims import mamba1_dims, mamba2_dims
from tests.helpers.mamba_tiny import (
    hf_mamba1,
    hf_mamba2,
    native_mixer,
    randomize,
    tiny_model_config,
    weights,
)

BATCH, LENGTH = 2, 21


def rel_err(got: torch.Tensor, expected: torch.Tensor) -> float:
    return float((got - expected).norm() / expected.norm())


def run_native(mixer, u_bld: torch.Tensor) -> torch.Tensor:
    out, bias = mixer(rearrange(u_bld, "b l d -> l b d"))
    out = out if bias is None else out + bias
    return rearrange(out, "l b d -> b l d")


def inputs(width: int, dtype=torch.float32, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(BATCH, LENGTH, width, generator=g, dtype=dtype).requires_grad_()


def assert_matches_reference(ours, reference, width: int) -> None:
    """Same output and input gradient (fp32, relative error ≤ 1e-5)."""
    u = inputs(width)
    expected = reference(u)
    got = run_native(ours, u)
    assert rel_err(got, expected) <= 1e-5
    (g_expected,) = torch.autograd.grad(expected.square().sum(), u)
    (g_got,) = torch.autograd.grad(got.square().sum(), u)
    assert rel_err(g_got, g_expected) <= 1e-5


@pytest.mark.parametrize("bias", [False, True])
def test_classic_mamba1_matches_transformers(runtime, bias):
    model = tiny_model_config("classic", proj_bias=bias)
    ours = native_mixer("mamba1", model)
    randomize(ours)
    hf = hf_mamba1(ours)
    assert_matches_reference(ours, hf, model.hidden_size)


MAMBA2_CASES = {
    "classic": dict(layout="classic", arch="llama", d_state=16, head_dim=16, groups=2),
    "attention-gqa": dict(layout="attention", arch="llama"),
    "attention-mha-bias": dict(layout="attention", arch="gpt_neox", init="attention"),
}


@pytest.mark.parametrize("case", sorted(MAMBA2_CASES))
def test_mamba2_matches_transformers(runtime, case):
    model = tiny_model_config(chunk_size=8, **MAMBA2_CASES[case])
    ours = native_mixer("mamba2", model)
    randomize(ours)
    hf = hf_mamba2(ours)
    assert_matches_reference(ours, hf, model.hidden_size)


def mil_mamba1_float64(mixer, u_bld: torch.Tensor) -> torch.Tensor:
    """MambaInLlama's `Mamba.forward` (mamba/hybrid_mamba_layer.py, repeat_kv_before_conv) written
    out in float64 from its separate projections, with the scan as an explicit time loop."""
    d = mixer.dims
    w = {k: v.detach().double() for k, v in weights(mixer).items()}
    u = u_bld.double()
    in_x, in_z, B_proj, C_proj = w["in_proj.weight"].split(list(d.in_proj_segments))
    x, z = u @ in_x.T, u @ in_z.T  # b l d_xb, b l d_inner
    B, C = u @ B_proj.T, u @ C_proj.T
    dt = (u @ w["dt_proj_down.weight"].T) @ w["dt_proj.weight"].T + w["dt_proj.bias"]
    n, groups = d.d_state, d.d_inner // d.d_state

    def repeat_kv(t):  # b l (g n) -> b l (g r n): each n-wide group repeated in place
        t = rearrange(t, "b l (g n) -> b g l n", n=n)
        t = t[:, :, None].expand(-1, -1, d.repeat, -1, -1).flatten(1, 2)
        return rearrange(t, "b g l n -> b l (g n)")

    x, B = repeat_kv(x), repeat_kv(B)
    conv = F.conv1d(
        x.transpose(1, 2),
        w["conv1d.weight"],
        w["conv1d.bias"],
        padding=d.d_conv - 1,
        groups=d.d_inner,
    )[..., :LENGTH]
    x = F.silu(conv).transpose(1, 2)  # b l d_inner
    dt = F.softplus(dt)
    A = -torch.exp(w["A_log"])
    y = torch.zeros_like(x)
    for b in range(BATCH):
        h = torch.zeros(d.d_inner, n, dtype=torch.float64)
        for t in range(LENGTH):
            Bg = B[b, t].view(groups, n).repeat_interleave(n, dim=0)  # per channel
            Cg = C[b, t].view(groups, n).repeat_interleave(n, dim=0)
            h = torch.exp(dt[b, t, :, None] * A) * h + (dt[b, t] * x[b, t])[:, None] * Bg
            y[b, t] = (h * Cg).sum(-1) + w["D"] * x[b, t]
    y = y * F.silu(z)
    return y @ w["out_proj.weight"].T


@pytest.mark.parametrize("arch", ["llama", "gpt_neox"])
def test_grouped_mamba1_matches_mambainllama_forward(runtime, arch):
    model = tiny_model_config("attention", arch=arch, d_state=8)
    ours = native_mixer("mamba1", model)
    assert ours.dims.grouped and (arch == "gpt_neox" or ours.dims.repeat == 2)
    randomize(ours)
    u = inputs(model.hidden_size)
    expected = mil_mamba1_float64(ours, u.detach())
    got = run_native(ours, u)
    assert rel_err(got.double(), expected) <= 1e-5


DECODE_CASES = [
    ("mamba1", dict(layout="classic")),
    ("mamba1", dict(layout="attention", d_state=8)),
    ("mamba2", dict(layout="classic", d_state=16, head_dim=16, groups=2, chunk_size=8)),
    ("mamba2", dict(layout="attention", chunk_size=8)),
]


@pytest.mark.parametrize("kind,mamba", DECODE_CASES)
def test_prefill_then_single_token_steps_match_the_full_forward(runtime, kind, mamba):
    model = tiny_model_config(**mamba)
    mixer = native_mixer(kind, model)
    randomize(mixer)
    u = rearrange(inputs(model.hidden_size).detach(), "b l d -> l b d")
    with torch.no_grad():
        (full, _), _ = mixer.forward_stateful(u, None, return_state=False)
        prefill = 5
        (first, _), state = mixer.forward_stateful(u[:prefill], None)
        pieces = [first]
        for t in range(prefill, LENGTH):
            (out, _), state = mixer.forward_stateful(u[t : t + 1], state)
            pieces.append(out)
        # A fresh state from `empty_state` gives the same as starting with none.
        (from_empty, _), _ = mixer.forward_stateful(u[:3], mixer.empty_state(BATCH))
    assert rel_err(torch.cat(pieces), full) <= 1e-5
    torch.testing.assert_close(from_empty, full[:3], rtol=1e-4, atol=1e-5)


def test_mixer_sizes_follow_the_layouts():
    gqa = tiny_model_config("attention", arch="llama")  # 4 heads, 2 KV heads, head_dim 16
    m1 = mamba1_dims(gqa)
    assert (m1.d_inner, m1.d_xb, m1.d_state, m1.dt_rank, m1.repeat) == (64, 32, 16, 4, 2)
    m2 = mamba2_dims(gqa)
    assert (m2.heads, m2.head_dim, m2.x_heads, m2.b_groups, m2.c_groups, m2.d_state) == (
        4,
        16,
        2,
        2,
        4,
        16,
    )
    classic = mamba1_dims(tiny_model_config("classic"))
    assert (classic.d_inner, classic.d_state, classic.grouped) == (128, 16, False)


@pytest.mark.parametrize(
    "mamba,kind,tp,match",
    [
        (dict(layout="attention"), "mamba2", 4, "divide mamba2.s 2 x heads \\(the key/value"),
        (dict(layout="attention", d_state=24), "mamba1", 1, "d_state=24 does not divide"),
        (dict(layout="attention", d_state=32), "mamba1", 2, "x/B groups"),
        (dict(layout="classic", head_dim=48), "mamba2", 1, "head_dim=48"),
        (dict(layout="attention", d_state=8), "mamba2", 1, "must equal head_dim=16"),
    ],
)
def test_impossible_mixer_shapes_are_refused(mamba, kind, tp, match):
    model = tiny_model_config(**mamba)
    with pytest.raises(ValueError, match=match):
        dims = mamba1_dims(model) if kind == "mamba1" else mamba2_dims(model)
        dims.check_tensor_parallel(tp)


def test_attention_init_needs_the_attention_layout():
    with pytest.raises(ValueError, match="needs layout 'attention'"):
        tiny_model_config("classic", init="attention")
