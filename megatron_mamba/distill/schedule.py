"""The weight of the layer loss over a run: CALD's target-guided (constant), unguided (0), and
hybrid (target-guided for the first fraction of the steps, then 0, the LR schedule continuing)."""

from __future__ import annotations


def layer_alpha(
    step: int, total_steps: int, alpha: float, until: float | None, until_step: int | None = None
) -> float:
    """alpha for 1-based `step`; it drops to 0 after step `until_step`, or with `until` (a
    fraction of total_steps) after step round(until · total_steps)."""
    if until is not None:
        until_step = round(until * total_steps)
    if until_step is None:
        return alpha
    return alpha if step <= until_step else 0.0
