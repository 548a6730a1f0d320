"""Tokenise jsonl or text files into a Megatron .bin/.idx pair.

    python data_tools/preprocess_data.py --input corpus.jsonl --tokenizer /path/to/hf_tokenizer \
        --output-prefix data/corpus --workers 4

An existing output pair is refused unless --overwrite.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from megatron_mamba.data.indexed import output_prefix
from megatron_mamba.data.preprocess import preprocess


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--input", nargs="+", type=Path, required=True)
    parser.add_argument("--tokenizer", required=True, help="local HF tokenizer directory")
    parser.add_argument("--output-prefix", required=True)
    parser.add_argument("--json-key", default="text")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--no-eod", action="store_true", help="do not append EOD per document")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output pair")
    args = parser.parse_args(argv)
    try:
        args.output_prefix = output_prefix(args.output_prefix)
        stats = preprocess(
            args.input,
            args.tokenizer,
            args.output_prefix,
            json_key=args.json_key,
            workers=args.workers,
            append_eod=not args.no_eod,
            overwrite=args.overwrite,
        )
    except (OSError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(
        f"{stats.documents} documents, {stats.tokens} tokens in {stats.seconds:.1f}s "
        f"({stats.tokens_per_second:,.0f} tokens/s) → {args.output_prefix}.bin/.idx"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
