"""Merge whole .bin/.idx pairs (e.g. preprocessing shards) into one, in the given order.

python data_tools/merge_datasets.py --inputs data/part0 data/part1 --output-prefix data/all \
    [--overwrite]
"""

from __future__ import annotations

import argparse
import sys

from megatron_mamba.data.indexed import dataset_prefix, output_prefix
from megatron_mamba.data.merge import merge_datasets


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--inputs", nargs="+", required=True, help=".bin/.idx prefixes, in order")
    parser.add_argument("--output-prefix", required=True)
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output pair")
    args = parser.parse_args(argv)
    try:
        args.output_prefix = output_prefix(args.output_prefix)
        args.inputs = [dataset_prefix(prefix) for prefix in args.inputs]
        summary = merge_datasets(args.inputs, args.output_prefix, args.overwrite)
    except (OSError, ValueError) as error:  # DatasetError is a ValueError
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"{summary.documents} documents, {summary.tokens} tokens → {args.output_prefix}.bin/.idx")
    return 0


if __name__ == "__main__":
    sys.exit(main())
