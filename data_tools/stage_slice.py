"""The chats of one step-wise distillation stage: its slice of each source, concatenated.

Stage K of SLICES takes the K-th of SLICES equal chunks (torch.chunk's split) of every source,
as MambaInLlama's train_hybrid_step.py does, so each stage sees all sources in proportion.

python data_tools/stage_slice.py --slices 32 --index 3 --output data/stage_3.jsonl \
    data/ultrachat_labels.jsonl data/ultrafeedback_labels.jsonl
"""

from __future__ import annotations

import argparse
import sys

from megatron_mamba.data.slices import write_stage_slice


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("sources", nargs="+", help="jsonl files, one record per line")
    parser.add_argument("--slices", type=int, required=True, help="chunks per source")
    parser.add_argument("--index", type=int, required=True, help="the stage's chunk, from 1")
    parser.add_argument("--output", required=True, help="the stage's jsonl (replaced)")
    args = parser.parse_args(argv)
    try:
        taken = write_stage_slice(args.sources, args.slices, args.index, args.output)
    except (OSError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    counts = " + ".join(map(str, taken))
    print(f"slice {args.index} of {args.slices}: {counts} records → {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
