"""Loss and learning-rate curves of a run, from its metrics.jsonl, to a PNG (matplotlib,
headless)."""

from __future__ import annotations

from pathlib import Path

from megatron_mamba.training.dpo import STATISTICS as DPO_STATISTICS
from megatron_mamba.training.metrics import read_metrics

# Logged per step besides the losses (fp16 adds its loss scale).
NOT_LOSSES = {
    "step",
    "time",
    "lr",
    "grad_norm",
    "tokens_per_s",
    "mfu",
    "loss_scale",
    "skipped",
    "valid_ppl",
    # DPO's rewards and log-probabilities (log-probs of hundreds would flatten the losses)
    *DPO_STATISTICS,
}


def plot(metrics_path: str | Path, out: str | Path) -> list[str]:
    """Write the figure; return the series it drew: the losses, then lr where logged."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = read_metrics(metrics_path)
    if not records:
        raise ValueError(f"{metrics_path} has no records")
    losses = sorted(
        {k for r in records for k, v in r.items() if k not in NOT_LOSSES and _number(v)}
    )
    fig, (ax_loss, ax_lr) = plt.subplots(2, 1, figsize=(8, 6), sharex=True)
    for name in losses:
        points = [(r["step"], r[name]) for r in records if name in r]
        ax_loss.plot(*zip(*points, strict=True), label=name)
    ax_loss.set_ylabel("loss")
    ax_loss.legend()
    lr = [(r["step"], r["lr"]) for r in records if "lr" in r]
    if lr:
        ax_lr.plot(*zip(*lr, strict=True), color="tab:gray")
        losses = [*losses, "lr"]
    ax_lr.set_ylabel("learning rate")
    ax_lr.set_xlabel("step")
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return losses


def _number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)
