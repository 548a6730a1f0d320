"""Import a transformers checkpoint directory (GPTNeoX/Pythia, Llama, Mistral, or a hybrid in our,
MambaInLlama's or CALD's layout) as a native checkpoint, swapping layers for Mamba by a pattern.

python tools/convert_hf_to_native.py HF_DIR OUT_DIR [--layer-pattern MAMA] \
    [--mamba layout=attention --mamba init=attention ...] \
    [--tensor-parallel 2 --pipeline-parallel 2]

The output loads at any TP/PP (train.init_from=OUT_DIR); the sizes given are only checked.
"""

from __future__ import annotations

import argparse
import sys

from megatron_mamba.config import ParallelConfig
from megatron_mamba.config_io import key_values
from megatron_mamba.convert.hf_config import hf_model_type
from megatron_mamba.convert.importer import import_hf
from megatron_mamba.convert.native_files import check_one_process

_SIZES_ONLY_CHECKED = " (--tensor-parallel/--pipeline-parallel only check that the model splits)"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("source", help="transformers checkpoint directory")
    parser.add_argument("output", help="native checkpoint directory to create")
    parser.add_argument(
        "--layer-pattern", help="one symbol per layer: A attention, M mamba1, S mamba2"
    )
    parser.add_argument("--mamba", action="append", default=[], help="Mamba setting key=value")
    parser.add_argument("--tensor-parallel", type=int, default=1)
    parser.add_argument("--pipeline-parallel", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0, help="seed of freshly initialised mixers")
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args(argv)
    try:
        check_one_process("tools/convert_hf_to_native.py", _SIZES_ONLY_CHECKED)
        config = import_hf(
            args.source,
            args.output,
            layer_pattern=args.layer_pattern,
            mamba=key_values(args.mamba, "--mamba"),
            parallel=ParallelConfig(args.tensor_parallel, args.pipeline_parallel),
            seed=args.seed,
            overwrite=args.overwrite,
        )
    except (OSError, ValueError) as error:  # config, mapping and file errors alike
        print(f"error: {error}", file=sys.stderr)
        return 1
    kind = hf_model_type(config)  # a Mistral is arch llama with a sliding window
    print(f"wrote {args.output}: {kind}, layer pattern {config.layer_pattern}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
