"""Runs of the tiny-GPT worker at a given TP/PP, reassembled into whole losses and gradients."""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import torch

from megatron_mamba.parallel.shards import merge_shards
from tests.distributed.launch import torchrun

WORKER = Path(__file__).parent / "workers" / "gpt_step.py"


class GptRun(NamedTuple):
    losses: list[torch.Tensor]  # one entry per last-stage rank: the per-microbatch losses
    grads: dict[str, torch.Tensor]  # whole gradients under single-process names
    out: Path
    backends: set[str]


def run_gpt_step(
    tmp: Path, tp: int, pp: int, full_state: Path | None = None, cpu: bool = True
) -> GptRun:
    """One forward/backward of the worker at TP×PP, reassembled."""
    out = tmp / f"tp{tp}pp{pp}"
    out.mkdir()
    extra = [str(full_state)] if full_state else []
    torchrun(WORKER, tp * pp, str(tp), str(pp), str(out), *extra, cpu=cpu)
    ranks = [torch.load(out / f"rank{r}.pt", weights_only=True) for r in range(tp * pp)]
    losses = [torch.stack(r["losses"]) for r in ranks if r["losses"]]
    grads = merge_shards([r["grads"] for r in ranks], [r["tp_rank"] for r in ranks])
    return GptRun(losses, grads, out, {r["backend"] for r in ranks})


def assert_matches(reference: GptRun, run: GptRun, rtol: float, atol: float) -> None:
    """Every rank's losses and every whole gradient equal the reference run's."""
    assert run.losses, "no rank reported losses"
    for rank_losses in run.losses:
        torch.testing.assert_close(rank_losses, reference.losses[0], rtol=rtol, atol=atol)
    assert run.grads.keys() == reference.grads.keys()
    for name, grad in run.grads.items():
        torch.testing.assert_close(grad, reference.grads[name], rtol=rtol, atol=atol, msg=name)
