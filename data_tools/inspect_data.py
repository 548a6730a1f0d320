"""Check a .bin/.idx pair and print its counts, dtype and (with a tokenizer) a decoded sample.

python data_tools/inspect_data.py data/corpus [--tokenizer DIR] [--sample 0] [--vocab-size N]
"""

from __future__ import annotations

import argparse
import sys

from megatron_mamba.data.indexed import dataset_prefix, open_indexed
from megatron_mamba.data.preprocess import load_tokenizer


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("prefix")
    parser.add_argument("--tokenizer")
    parser.add_argument("--sample", type=int, default=0)
    parser.add_argument("--vocab-size", type=int)
    parser.add_argument("--allow-short-bin", action="store_true")
    args = parser.parse_args(argv)
    args.prefix = dataset_prefix(args.prefix)
    try:
        dataset, s = open_indexed(args.prefix, args.vocab_size, args.allow_short_bin)
        tokenizer = load_tokenizer(args.tokenizer) if args.tokenizer else None
    except (OSError, ValueError) as error:  # DatasetError is a ValueError
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(
        f"{s.prefix}: {s.sequences} sequences ({s.usable_sequences} readable), "
        f"{s.documents} documents, {s.tokens} tokens, dtype {s.dtype.__name__}"
        + (f", largest token id {s.max_token}" if s.max_token is not None else "")
    )
    if not 0 <= args.sample < s.usable_sequences:
        print(f"error: sample {args.sample} is outside 0…{s.usable_sequences - 1}", file=sys.stderr)
        return 1
    tokens = dataset[args.sample]
    print(f"sample {args.sample}: {len(tokens)} tokens: {tokens[:32].tolist()}…")
    if tokenizer is not None:
        print(tokenizer.decode(tokens.tolist()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
