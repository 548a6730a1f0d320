"""Held-out perplexity of a native checkpoint on an indexed dataset, without lm-eval, at any
TP/PP (the rest of the world is data parallel):

    torchrun --nproc-per-node 4 eval/perplexity.py --checkpoint runs/hybrid \
        --data data/pile_val_text_document --seq_length 2048 --tensor 2 --max_windows 512

Prints one JSON line per checkpoint (checkpoint, loss, perplexity, tokens, windows); --output
also writes them to a file.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from megatron_mamba.config import ModelConfig, ParallelConfig
from megatron_mamba.data.held_out import HeldOutWindows
from megatron_mamba.data.indexed import DatasetError, check_pair, dataset_prefix
from megatron_mamba.evaluation.perplexity import held_out_loss
from megatron_mamba.models.build import build_model, validate_parallel
from megatron_mamba.runtime import ParallelSizes, init_runtime
from megatron_mamba.training.checkpoint import (
    CheckpointError,
    find_checkpoint,
    load_weights,
    read_model_config,
)


def _positive(text: str) -> int:
    """A size of at least one: --max_windows 0 would read every window, --seq_length 0 would
    divide by zero."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} is not a positive integer")
    return value


def _output_problem(output: Path) -> str | None:
    """Why --output could not be written, known before the evaluation rather than after it."""
    existing = next(p for p in (output, *output.parents) if p.exists())
    if existing == output and output.is_dir():
        return f"--output {output} is a directory; expected a file path"
    if existing != output and not existing.is_dir():
        return f"--output {output}: {existing} is a file, not a directory"
    return None


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--checkpoint", required=True, nargs="+", help="native checkpoints or run directories"
    )
    parser.add_argument("--data", required=True, help=".bin/.idx prefix of the held-out set")
    parser.add_argument("--seq_length", type=_positive, default=2048)
    parser.add_argument("--micro_batch", type=_positive, default=4)
    parser.add_argument("--first_window", type=int, default=0)
    parser.add_argument("--max_windows", type=_positive)
    parser.add_argument("--tensor", type=_positive, default=1)
    parser.add_argument("--pipeline", type=_positive, default=1)
    parser.add_argument("--output", help="also write the results here, one JSON line each")
    return parser.parse_args(argv)


def _checked_config(step: Path, args: argparse.Namespace) -> ModelConfig:
    """`step`'s model, refused (naming it) where it cannot run at these settings: found only
    when its turn came, a later checkpoint failed after the earlier ones' work."""
    config = read_model_config(step)
    try:
        validate_parallel(config, ParallelConfig(tensor=args.tensor, pipeline=args.pipeline))
    except ValueError as error:
        raise ValueError(f"{step}: {error}") from None
    if config.sliding_window is not None and args.seq_length > config.sliding_window:
        raise ValueError(
            f"--seq_length {args.seq_length} exceeds the sliding_window={config.sliding_window} "
            f"of {step}, which its attention does not apply; expected at most "
            f"{config.sliding_window}"
        )
    return config


def _init_runtime(args: argparse.Namespace):
    """The runtime; a world that TP×PP does not divide (every rank stops here alike) names the
    launch that fits."""
    try:
        return init_runtime(ParallelSizes(args.tensor, args.pipeline))
    except ValueError as error:
        size = args.tensor * args.pipeline
        raise ValueError(
            f"{error}; launch a multiple of {size} processes: torchrun --nproc-per-node {size} "
            "eval/perplexity.py ..."
        ) from None


def _check_window_count(windows: HeldOutWindows, args: argparse.Namespace, dp: int) -> None:
    """At least one micro-batch per data-parallel rank; --max_windows named when it is the
    cap, not the held-out set."""
    per_round = args.micro_batch * dp
    if len(windows) >= per_round:
        return
    if args.max_windows is not None and len(windows) == args.max_windows:
        raise ValueError(
            f"--max_windows {args.max_windows} is fewer than --micro_batch × data-parallel "
            f"size = {args.micro_batch} × {dp}"
        )
    raise DatasetError(
        f"the held-out set has {len(windows)} windows, fewer than --micro_batch × data-parallel "
        f"size = {args.micro_batch} × {dp}"
    )


def _windows(args: argparse.Namespace, vocab_size: int, dp: int) -> HeldOutWindows:
    windows = HeldOutWindows(
        args.data, args.seq_length, vocab_size, args.first_window, args.max_windows
    )
    _check_window_count(windows, args, dp)
    return windows


def main(argv=None) -> int:
    args = parse_args(argv)
    args.data = dataset_prefix(args.data)
    try:  # the common mistakes, before any model is built: one line, no traceback
        check_pair(args.data)
        steps = [find_checkpoint(Path(c), Path(c)) for c in args.checkpoint]
        problem = args.output and _output_problem(Path(args.output))
        if problem:
            raise ValueError(problem)
        configs = [_checked_config(step, args) for step in steps]
        runtime = _init_runtime(args)
        dp = runtime.data_parallel_size
        by_vocab = {c.vocab_size: _windows(args, c.vocab_size, dp) for c in configs}
    except (CheckpointError, DatasetError, OSError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    lines = []
    for step, config in zip(steps, configs, strict=True):  # the process group once for all
        model = build_model(config, ParallelConfig(tensor=args.tensor, pipeline=args.pipeline))
        model = model.to(runtime.device)
        load_weights(step, model)
        windows = by_vocab[config.vocab_size]
        result = held_out_loss(model, windows, config.vocab_size, args.micro_batch, runtime.device)
        lines.append(json.dumps({"checkpoint": str(step), **result.as_dict()}))
        if runtime.is_main:
            print(lines[-1], flush=True)
        del model
    if runtime.is_main and args.output:
        output = Path(args.output)
        output.parent.mkdir(parents=True, exist_ok=True)
        partial = output.with_name(f".{output.name}.partial")
        partial.write_text("".join(line + "\n" for line in lines))
        partial.replace(output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
