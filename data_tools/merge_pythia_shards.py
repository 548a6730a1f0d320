"""Merge the pre-shuffled Pile's shards into one .bin checked against document.idx.

    python data_tools/merge_pythia_shards.py --shards pile/document-000{00..20}-of-00020.bin \
        --index pile/document.idx --output-prefix pile/document [--overwrite]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from megatron_mamba.data.indexed import output_prefix
from megatron_mamba.data.merge import merge_shards


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shards", nargs="+", type=Path, required=True, help="in order")
    parser.add_argument("--index", type=Path, required=True)
    parser.add_argument("--output-prefix", required=True)
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output pair")
    args = parser.parse_args(argv)
    try:
        args.output_prefix = output_prefix(args.output_prefix)
        summary = merge_shards(args.shards, args.index, args.output_prefix, args.overwrite)
    except (OSError, ValueError) as error:  # DatasetError is a ValueError
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"{summary.sequences} sequences, {summary.tokens} tokens → {args.output_prefix}.bin")
    return 0


if __name__ == "__main__":
    sys.exit(main())
