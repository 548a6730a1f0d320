"""Training entry point, launched with torchrun:

    torchrun --nproc-per-node N -m megatron_mamba.train --config run.yaml train.learning_rate=3e-4

`--dry-run` prints the resolved config and exits. A bad config stops before any process group is
made, with one line naming the key (printed by rank 0). An input the run finds bad later (a
missing checkpoint or data file, a precision the device lacks) stops it with one line per rank;
anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import os
import sys

from megatron_mamba.config_io import ConfigError, dump, load
from megatron_mamba.data.indexed import DatasetError
from megatron_mamba.training.checkpoint import CheckpointError
from megatron_mamba.training.run_config import RunConfig


def _error(message: str, every_rank: bool = False) -> None:
    """Print `error: message` on rank 0, or on every rank (prefixed with it) when the ranks may
    disagree."""
    rank, world = os.environ.get("RANK", "0"), int(os.environ.get("WORLD_SIZE", "1"))
    if every_rank and world > 1:  # one write, so that the ranks' lines do not interleave
        sys.stderr.write(f"error: [rank {rank}] {message}\n")
    elif rank == "0":
        sys.stderr.write(f"error: {message}\n")
    sys.stderr.flush()


def _check_world_size(run: RunConfig) -> None:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    tp, pp = run.parallel.tensor, run.parallel.pipeline
    if world % (tp * pp):
        raise ConfigError(
            f"parallel.tensor × parallel.pipeline = {tp} × {pp} does not divide the {world} "
            f"process(es) launched; launch a multiple of {tp * pp} (torchrun --nproc-per-node)"
        )
    run.train.accumulation(world // (tp * pp))  # a global batch the replicas cannot share


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Train a (hybrid) Mamba model.")
    parser.add_argument("--config", help="YAML run config")
    parser.add_argument("--dry-run", action="store_true", help="print the resolved config, exit")
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.min_lr=1e-5")
    args = parser.parse_intermixed_args(argv)  # overrides may come before or after the flags
    try:
        run = load(RunConfig, args.config, args.overrides)
        if not args.dry_run:
            _check_world_size(run)
    except (ConfigError, OSError) as error:
        _error(str(error))
        return 2
    if args.dry_run:
        print(dump(run), end="")
        resolved = dump(run.model_config()).splitlines()
        print("# resolved model:\n" + "\n".join(f"#   {line}" for line in resolved))
        return 0
    from megatron_mamba.runtime import shutdown_runtime
    from megatron_mamba.training.trainer import TrainingError, train

    try:
        train(run)
    except (ConfigError, CheckpointError, DatasetError, TrainingError, FileNotFoundError) as error:
        _error(str(error), every_rank=True)
        return 1
    finally:
        shutdown_runtime()
    return 0


if __name__ == "__main__":
    sys.exit(main())
