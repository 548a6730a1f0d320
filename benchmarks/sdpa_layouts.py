"""cuDNN's causal attention, forward + backward, on Pythia-1b's shape (batch 4, 8 heads, 2048
positions, head dim 256, bf16) with the memory layouts each model hands it.

In the attention benchmark's profile the same cuDNN kernels run 4–9% slower a call in our model
than in transformers' (benchmarks/RESULTS.md). The shapes are equal; the strides are not:
transformers' queries and keys are contiguous [b, h, s, d] (its RoPE's cat), its values a view
of the [b, s, h, 3d] fused QKV, and the output's gradient [b, s, h·d]; ours come [s, b, …]
throughout (megatron's layout), the queries and keys from our RoPE kernel, which could as well
write them batch-first. Rounds taking turns; medians.

    python benchmarks/sdpa_layouts.py --out $OUT/sdpa_layouts.json
"""

from __future__ import annotations

import argparse
import statistics

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from benchmarks.common import interleaved_step_seconds, save_report

B, H, S, D = 4, 8, 2048, 256
DEVICE = "cuda"


def _leaf(*shape) -> torch.Tensor:
    return torch.randn(*shape, device=DEVICE, dtype=torch.bfloat16, requires_grad=True)


def transformers_layout():
    """q, k contiguous [b, h, s, d]; v from the fused [b, s, h, 3d]; grad from [b, s, h·d]."""
    q, k, qkv = _leaf(B, H, S, D), _leaf(B, H, S, D), _leaf(B, S, H, 3 * D)
    grad = torch.randn(B, S, H, D, device=DEVICE, dtype=torch.bfloat16).transpose(1, 2)
    return q, k, qkv[..., 2 * D :].transpose(1, 2), grad


def ours_layout(queries_batch_first: bool = False):
    """q, k contiguous [s, b, h, d] (or [b, s, h, d]); v from the fused [s, b, h, 3d]; grad
    from [s, b, h·d]; all seen as [b, h, s, d]."""
    if queries_batch_first:
        q, k = (_leaf(B, S, H, D).transpose(1, 2) for _ in range(2))
    else:
        q, k = (_leaf(S, B, H, D).permute(1, 2, 0, 3) for _ in range(2))
    qkv = _leaf(S, B, H, 3 * D)
    grad = torch.randn(S, B, H, D, device=DEVICE, dtype=torch.bfloat16).permute(1, 2, 0, 3)
    return q, k, qkv[..., 2 * D :].permute(1, 2, 0, 3), grad


def contiguous_layout():
    grad = torch.randn(B, H, S, D, device=DEVICE, dtype=torch.bfloat16)
    return _leaf(B, H, S, D), _leaf(B, H, S, D), _leaf(B, H, S, D), grad


LAYOUTS = {
    "transformers": transformers_layout,
    "ours": ours_layout,
    "ours, q and k batch-first": lambda: ours_layout(queries_batch_first=True),
    "all contiguous [b, h, s, d]": contiguous_layout,
}


def _step(q, k, v, grad):
    """Forward and backward to q, k and v themselves (views, as in the models: no gradient
    accumulated into the tensors beneath)."""

    def run():
        with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            torch.autograd.grad(out, (q, k, v), grad)

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out")
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    torch.manual_seed(0)
    steps = {name: _step(*make()) for name, make in LAYOUTS.items()}
    seconds = interleaved_step_seconds(steps, args.rounds, iters=20)
    print("| layout | forward + backward, µs | × transformers' |\n|---|---|---|")
    base = statistics.median(seconds["transformers"])
    report = {}
    for name, per_round in seconds.items():
        median = statistics.median(per_round)
        report[name] = {"us": median * 1e6, "per_round_s": per_round}
        print(f"| {name} | {median * 1e6:.0f} | {median / base:.3f} |")
    save_report(args.out, report)


if __name__ == "__main__":
    main()
