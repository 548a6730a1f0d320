"""Which layers become Mamba at each stage of MambaInLlama's progressive distillation.

- By fraction (its zephyr_* configs, 32 layers): 25% Mamba swaps every fourth layer from layer
  0, 50% every even layer, 75% all but every fourth (layers 3, 7, …keep attention), 87.5% all
  but every eighth (7, 15, …). Each is a superset of the one before, so a stage starts from
  the previous stage's weights.
- Step-wise (its *_stepwise configs): one more Mamba layer per stage, even layers from the
  bottom first (0, 2, 4, …), then 1, 5, 9, …, then 3, 11, 19, …, then 7, 23, …: halving the
  remaining attention's spacing each round, so the stages pass through the fractions' patterns.

    python -m megatron_mamba.convert.progressive --layers 32 --mamba-fraction 0.5 [--symbol M]
    python -m megatron_mamba.convert.progressive --layers 32 --stepwise 3
"""

from __future__ import annotations

import argparse
import sys

# mamba fraction → is layer i Mamba (i counted from 0)
_ZEPHYR = {
    0.25: lambda i: i % 4 == 0,
    0.5: lambda i: i % 2 == 0,
    0.75: lambda i: i % 4 != 3,
    0.875: lambda i: i % 8 != 7,
    1.0: lambda i: True,
}


def _check_layers(num_layers: int) -> None:
    """An empty pattern would print, and then fail far from here."""
    if num_layers < 1:
        raise ValueError(f"number of layers {num_layers} must be a positive integer")


def fraction_pattern(num_layers: int, mamba_fraction: float, symbol: str = "M") -> str:
    _check_layers(num_layers)
    if mamba_fraction not in _ZEPHYR:
        raise ValueError(
            f"mamba fraction {mamba_fraction} is not one of MambaInLlama's "
            f"{', '.join(map(str, _ZEPHYR))}"
        )
    period = {0.25: 4, 0.5: 2, 0.75: 4, 0.875: 8, 1.0: 1}[mamba_fraction]
    if num_layers % period:
        raise ValueError(
            f"{num_layers} layers do not split into groups of {period}, as a Mamba fraction "
            f"of {mamba_fraction} needs"
        )
    is_mamba = _ZEPHYR[mamba_fraction]
    return "".join(symbol if is_mamba(i) else "A" for i in range(num_layers))


def stepwise_order(num_layers: int) -> list[int]:
    """Layers in the order they become Mamba: those with i % 2 == 0, then i % 4 == 1, i % 8 == 3,
    i % 16 == 7, …, each round from the bottom."""
    order, period = [], 2
    while len(order) < num_layers:
        order += [i for i in range(num_layers) if i % period == period // 2 - 1]
        period *= 2
    return order


def stepwise_pattern(num_layers: int, mamba_layers: int, symbol: str = "M") -> str:
    _check_layers(num_layers)
    if not 0 < mamba_layers <= num_layers:
        raise ValueError(f"stepwise stage {mamba_layers} must be in 1…{num_layers}")
    chosen = set(stepwise_order(num_layers)[:mamba_layers])
    return "".join(symbol if i in chosen else "A" for i in range(num_layers))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="print a stage's layer pattern")
    parser.add_argument("--layers", type=int, required=True)
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--mamba-fraction", type=float)
    which.add_argument("--stepwise", type=int, help="number of Mamba layers at this stage")
    parser.add_argument("--symbol", default="M", choices=["M", "S"], help="mamba1 or mamba2")
    args = parser.parse_args(argv)
    try:
        if args.stepwise is not None:
            print(stepwise_pattern(args.layers, args.stepwise, args.symbol))
        else:
            print(fraction_pattern(args.layers, args.mamba_fraction, args.symbol))
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
