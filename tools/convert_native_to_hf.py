"""Export a native checkpoint as a transformers directory: plain GPTNeoX/Llama/Mistral when every
layer is attention, our hybrid classes otherwise (AutoModelForCausalLM loads the plain ones as
they are, and the hybrids once `import megatron_mamba.hf` has registered them, or with
trust_remote_code=True).

python tools/convert_native_to_hf.py CHECKPOINT OUT_DIR [--dtype bf16] [--tokenizer DIR]

CHECKPOINT is a checkpoint directory, or a run / import directory whose latest checkpoint is taken.
"""

from __future__ import annotations

import argparse
import sys

import torch

from megatron_mamba.convert.exporter import export_hf
from megatron_mamba.convert.hf_config import hf_model_type
from megatron_mamba.convert.native_files import check_one_process
from megatron_mamba.training.checkpoint import CheckpointError

# both spellings, as eval/run_lm_evals.py --dtype takes them
_DTYPES = {
    "fp32": torch.float32,
    "bf16": torch.bfloat16,
    "fp16": torch.float16,
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint")
    parser.add_argument("output")
    parser.add_argument("--dtype", choices=list(_DTYPES), default="fp32")
    parser.add_argument("--tokenizer", help="directory whose tokenizer files to copy")
    parser.add_argument("--max-shard-gb", type=float, default=2.0)
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args(argv)
    if not args.max_shard_gb > 0:
        print(f"error: --max-shard-gb {args.max_shard_gb} must be positive", file=sys.stderr)
        return 1
    try:
        check_one_process("tools/convert_native_to_hf.py")
        config = export_hf(
            args.checkpoint,
            args.output,
            dtype=_DTYPES[args.dtype],
            overwrite=args.overwrite,
            max_shard_bytes=int(args.max_shard_gb * 1024**3),
            tokenizer=args.tokenizer,
        )
    except (CheckpointError, OSError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    kind = hf_model_type(config)  # a Mistral is arch llama with a sliding window
    print(f"wrote {args.output}: {kind}, layer pattern {config.layer_pattern}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
