"""One training step of ours and of the transformers baseline profiled (benchmarks/profiling.py):
top kernels, GPU time by kind of kernel, operators by input shape.

torchrun --nproc_per_node 1 benchmarks/profile_step.py [--model attention|mamba1|mamba2]
"""

from __future__ import annotations

import argparse
import functools

import torch

from benchmarks import attention_model, mamba_model
from benchmarks.profiling import profile_step
from megatron_mamba.models.presets import preset
from megatron_mamba.runtime import init_runtime


def builders(model: str):
    """(config, [(name, build(config, tokens))]) for the model under comparison."""
    if model == "attention":
        return preset("pythia-1b"), [
            ("transformers", attention_model.hf_step),
            ("ours", attention_model.ours_step),
        ]
    symbol, mamba = {"mamba1": ("M", mamba_model.CALD_MAMBA1), "mamba2": ("S", mamba_model.MAMBA2)}[
        model
    ]
    config = preset("pythia-1b", layer_pattern=symbol * 16, mamba=mamba)
    return config, [
        ("CALD-style", functools.partial(mamba_model.cald_step, kind=model)),
        ("ours", functools.partial(mamba_model.ours_step, kind=model)),
    ]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="attention", choices=["attention", "mamba1", "mamba2"])
    parser.add_argument("--rows", type=int, default=25)
    args = parser.parse_args()
    init_runtime(seed=0)
    config, builds = builders(args.model)
    tokens = torch.randint(0, config.vocab_size, (4, 2049), device="cuda")
    for name, build in builds:
        model, step = build(config, tokens=tokens)
        profile_step(name, step, args.rows)
        del model, step
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
