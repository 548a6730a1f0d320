"""Plot a run's losses and learning rate from its metrics.jsonl to a PNG.

python tools/plot_run.py runs/my_run/metrics.jsonl --out runs/my_run/curves.png
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from megatron_mamba.training.plots import plot


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("metrics", type=Path)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    out = args.out or args.metrics.with_suffix(".png")
    try:
        drawn = plot(args.metrics, out)
    except (OSError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"{', '.join(drawn)} → {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
