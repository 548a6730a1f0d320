"""Which pieces of a training step can be captured in a CUDA graph, and what a graph saves.

Each case is a forward + backward: the kernels alone (mamba_ssm, causal_conv1d) and our models
(attention, classic mamba1, mamba2, a MambaInLlama Llama hybrid). A case is warmed up on a side
stream (Triton autotunes there), captured, replayed, and its replay checked against an eager run
and timed against it. A capture that fails prints where.

    python benchmarks/cuda_graph_probe.py [--cases a,b,...]
"""

from __future__ import annotations

import argparse
import traceback
from collections.abc import Callable

import torch

from benchmarks.common import median_step_seconds
from megatron_mamba.config import ParallelConfig, RunPrecision
from megatron_mamba.models.build import build_model
from megatron_mamba.models.presets import preset
from megatron_mamba.runtime import init_runtime

BF16 = dict(device="cuda", dtype=torch.bfloat16)


def leaf(*shape, scale=1.0, dtype=torch.bfloat16):
    return (torch.randn(*shape, device="cuda", dtype=dtype) * scale).requires_grad_()


def conv_case():
    from causal_conv1d import causal_conv1d_fn

    x, w, b = leaf(2, 1024, 2048), leaf(1024, 4), leaf(1024)
    return lambda: causal_conv1d_fn(x, w, b, activation="silu").float().square().mean(), [x, w, b]


def scan_case():
    from mamba_ssm.ops.selective_scan_interface import selective_scan_fn

    d, n, length = 1024, 16, 2048
    u, delta, z = leaf(2, d, length), leaf(2, d, length, scale=0.1), leaf(2, d, length)
    A = (-torch.rand(d, n, device="cuda") - 0.5).requires_grad_()
    B, C = leaf(2, n, length), leaf(2, n, length)
    D, bias = leaf(d, dtype=torch.float32), leaf(d, dtype=torch.float32)

    def run():
        y = selective_scan_fn(u, delta, A, B, C, D, z, bias, delta_softplus=True)
        return y.float().square().mean()

    return run, [u, delta, z, A, B, C, D, bias]


def inner_case():
    from mamba_ssm.ops.selective_scan_interface import mamba_inner_fn

    d, n, r, h, length = 1024, 16, 64, 512, 2048
    xz = leaf(2, 2 * d, length)
    conv_w, conv_b = leaf(d, 1, 4, scale=0.3), leaf(d)
    x_proj = leaf(r + 2 * n, d, scale=0.03)
    dt_proj, out_proj = leaf(d, r, scale=0.1), leaf(h, d, scale=0.03)
    A = (-torch.rand(d, n, device="cuda") - 0.5).requires_grad_()
    D, bias = leaf(d, dtype=torch.float32), leaf(d, dtype=torch.float32)
    params = [xz, conv_w, conv_b, x_proj, dt_proj, out_proj, A, D, bias]

    def run():
        y = mamba_inner_fn(
            xz, conv_w, conv_b, x_proj, dt_proj, out_proj, None, A, None, None, D, bias,
            delta_softplus=True,
        )  # fmt: skip
        return y.float().square().mean()

    return run, params


def ssd_case():
    from mamba_ssm.ops.triton.ssd_combined import mamba_split_conv1d_scan_combined

    heads, p, n, length = 16, 64, 128, 2048
    d = heads * p
    zxbcdt = leaf(2, length, 2 * d + 2 * n + heads)
    conv_w, conv_b = leaf(d + 2 * n, 4, scale=0.3), leaf(d + 2 * n)
    dt_bias, A = leaf(heads, dtype=torch.float32), (-torch.rand(heads, device="cuda") - 1)
    D, norm = leaf(heads, dtype=torch.float32), leaf(d)
    A.requires_grad_()

    def run():
        y = mamba_split_conv1d_scan_combined(
            zxbcdt, conv_w, conv_b, dt_bias, A, D, 256, rmsnorm_weight=norm, headdim=p,
            ngroups=1, norm_before_gate=False,
        )  # fmt: skip
        return y.float().square().mean()

    return run, [zxbcdt, conv_w, conv_b, dt_bias, A, D, norm]


def model_case(config):
    def make():
        precision = RunPrecision("bf16")
        model = build_model(config, ParallelConfig(), precision, cpu_initialization=False)
        model.cuda().train()
        tokens = torch.randint(0, config.vocab_size, (2, 1025), device="cuda")

        def run():
            return model(tokens[:, :-1], None, None, labels=tokens[:, 1:]).float().mean()

        return run, list(model.parameters())

    return make


NEOX = dict(num_layers=4)
CASES: dict[str, Callable] = {
    "conv": conv_case,
    "selective_scan": scan_case,
    "mamba_inner": inner_case,
    "ssd_combined": ssd_case,
    "model_attention": model_case(preset("pythia-410m", **NEOX, layer_pattern="AAAA")),
    "model_mamba1": model_case(
        preset("pythia-410m", **NEOX, layer_pattern="MMMM", mamba=dict(layout="classic"))
    ),
    "model_mamba2": model_case(
        preset("pythia-410m", **NEOX, layer_pattern="SSSS", mamba=dict(layout="classic"))
    ),
    "model_llama_hybrid": model_case(
        preset("llama-3.2-1b", num_layers=4, layer_pattern="MAMA", mamba=dict(layout="attention"))
    ),
}


def probe(name: str, make: Callable) -> None:
    run, params = make()

    def step():
        run().backward()

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            step()
    torch.cuda.current_stream().wait_stream(side)
    torch.cuda.synchronize()
    eager_s = median_step_seconds(step)
    for p in params:
        p.grad.zero_()
    step()
    eager_grads = [p.grad.clone() for p in params]

    graph = torch.cuda.CUDAGraph()
    try:
        for p in params:
            p.grad.zero_()
        with torch.cuda.graph(graph):
            step()
    except Exception as error:  # noqa: BLE001 - the probe reports any capture failure
        frames = traceback.extract_tb(error.__traceback__)[-6:]
        where = " <- ".join(f"{f.filename.split('site-packages/')[-1]}:{f.lineno}" for f in frames)
        print(f"| {name} | capture failed | {type(error).__name__}: {str(error)[:160]} | {where} |")
        torch.cuda.synchronize()
        return
    for p in params:
        p.grad.zero_()
    graph.replay()
    torch.cuda.synchronize()
    worst = max(
        ((p.grad.float() - e.float()).abs().max() / e.float().abs().max().clamp_min(1e-12)).item()
        for p, e in zip(params, eager_grads, strict=True)
    )
    graph_s = median_step_seconds(graph.replay)
    print(
        f"| {name} | captured | eager {eager_s * 1e3:.2f} ms, graph {graph_s * 1e3:.2f} ms "
        f"({eager_s / graph_s:.2f}×) | largest gradient difference {worst:.2e} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--cases", default=",".join(CASES))
    args = parser.parse_args()
    init_runtime(seed=0)
    print("| case | capture | time | check |\n|---|---|---|---|")
    for name in args.cases.split(","):
        try:
            probe(name, CASES[name])
        except Exception as error:  # noqa: BLE001
            print(f"| {name} | error outside capture | {type(error).__name__}: {error} | |")
        torch.cuda.synchronize()
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
