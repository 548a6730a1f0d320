"""Show the tokens (and text) Pythia trained on at a step: items s·B … s·B+B−1 of the
pre-shuffled Pile.

    python data_tools/pythia_batch_viewer.py pile/document --step 1000 [--global-batch 1024] \
        [--rows 2] [--tokenizer DIR] [--item-length 2049]
"""

from __future__ import annotations

import argparse
import sys

from megatron_mamba.data.indexed import dataset_prefix
from megatron_mamba.data.preprocess import load_tokenizer
from megatron_mamba.data.pythia import DataOrder, PythiaPreshuffled


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("prefix")
    parser.add_argument("--step", type=int, required=True)
    parser.add_argument("--global-batch", type=int, default=1024)
    parser.add_argument("--rows", type=int, default=2, help="how many of the batch to print")
    parser.add_argument("--tokenizer")
    parser.add_argument(
        "--item-length",
        type=int,
        default=2049,
        help="tokens per item (data.item_length; the pre-shuffled Pile's is 2049)",
    )
    parser.add_argument("--allow-short-bin", action="store_true")
    args = parser.parse_args(argv)
    args.prefix = dataset_prefix(args.prefix)
    try:
        if args.step < 0:
            raise ValueError(f"--step {args.step} must be non-negative")
        if args.rows < 1:
            raise ValueError(f"--rows {args.rows} must be at least 1")
        items = DataOrder(args.global_batch).items(args.step, dp_rank=0)
        tokenizer = load_tokenizer(args.tokenizer) if args.tokenizer else None
        data = PythiaPreshuffled(
            args.prefix, allow_short_bin=args.allow_short_bin, sequence_length=args.item_length
        )
        for item in list(items)[: args.rows]:
            tokens = data[item]
            print(f"step {args.step} item {item}: {tokens[:16].tolist()}…")
            if tokenizer:
                print(tokenizer.decode(tokens.tolist()))
    except (IndexError, OSError, ValueError) as error:  # DatasetError is a ValueError
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
