"""Training entry point, launched with torchrun:

    torchrun --nproc-per-node N -m megatron_mamba.train --config run.yaml train.learning_rate=3e-4

`--dry-run` prints the resolved config and exits. A bad config stops before any process group is
made, with one line naming the key.
"""

from __future__ import annotations

import argparse
import sys

from megatron_mamba.config_io import ConfigError, dump, load
from megatron_mamba.training.run_config import RunConfig


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Train a (hybrid) Mamba model.")
    parser.add_argument("--config", help="YAML run config")
    parser.add_argument("--dry-run", action="store_true", help="print the resolved config, exit")
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.min_lr=1e-5")
    args = parser.parse_args(argv)
    try:
        run = load(RunConfig, args.config, args.overrides)
    except (ConfigError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if args.dry_run:
        print(dump(run), end="")
        resolved = dump(run.model_config()).splitlines()
        print("# resolved model:\n" + "\n".join(f"#   {line}" for line in resolved))
        return 0
    from megatron_mamba.runtime import shutdown_runtime
    from megatron_mamba.training.trainer import train

    try:
        train(run)
    finally:
        shutdown_runtime()
    return 0


if __name__ == "__main__":
    sys.exit(main())
