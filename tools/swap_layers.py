"""Swap more attention layers of a native checkpoint for Mamba (progressive distillation).

python tools/swap_layers.py STAGE1_CKPT STAGE2_INIT --layer-pattern MAMAMAMA \
    [--mamba init=attention] [--seed 0]

Mamba layers of the source keep their trained weights; the newly swapped layers start from their
attention weights (mamba.init=attention, as the source was made) or fresh. Train the next stage
with train.init_from=STAGE2_INIT.
"""

from __future__ import annotations

import argparse
import sys

from megatron_mamba.config_io import key_values
from megatron_mamba.convert.hf_config import hf_model_type
from megatron_mamba.convert.native_files import check_one_process
from megatron_mamba.convert.swap import swap_native
from megatron_mamba.training.checkpoint import CheckpointError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("source", help="native checkpoint directory (run or conversion)")
    parser.add_argument("output", help="native checkpoint directory to create")
    parser.add_argument(
        "--layer-pattern",
        required=True,
        help="one symbol per layer: A attention, M mamba1, S mamba2",
    )
    parser.add_argument("--mamba", action="append", default=[], help="Mamba setting key=value")
    parser.add_argument("--seed", type=int, default=0, help="seed of freshly initialised mixers")
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args(argv)
    try:
        check_one_process("tools/swap_layers.py")
        config = swap_native(
            args.source,
            args.output,
            args.layer_pattern,
            mamba=key_values(args.mamba, "--mamba"),
            seed=args.seed,
            overwrite=args.overwrite,
        )
    except (CheckpointError, OSError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    kind = hf_model_type(config)  # a Mistral is arch llama with a sliding window
    print(f"wrote {args.output}: {kind}, layer pattern {config.layer_pattern}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
