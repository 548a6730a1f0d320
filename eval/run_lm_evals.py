"""lm-eval over one or more checkpoints (native or HF exports), one comparison table.

    python eval/run_lm_evals.py runs/teacher runs/unguided runs/hybrid --output_dir evals/ \
        --dtype bfloat16 --batch_size 32                  # CALD's suite, 0-shot
    python eval/run_lm_evals.py export/ --tasks my_task --include_path my_tasks/

Writes <output_dir>/results.json (every metric lm-eval reports), table.json and table.md, after
each checkpoint (the rows so far), and prints the table. Offline: with the datasets already in
the HF cache, set HF_DATASETS_OFFLINE=1 and HF_HUB_OFFLINE=1; or use local task YAMLs whose data
are local files.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from megatron_mamba.evaluation.suite import (
    CALD_TASKS,
    Checkpoint,
    check_tasks,
    comparison_table,
    evaluate,
    load_task_data,
    task_manager,
    to_markdown,
    write_outputs,
)

_DTYPE_ALIASES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


def _batch_size(text: str) -> str:
    """Checked here: lm-eval would find a bad one only after loading the first model."""
    if re.fullmatch(r"[1-9][0-9]*|auto(:[0-9]+(\.[0-9]*)?)?", text):
        return text
    raise argparse.ArgumentTypeError(f"{text} is not a positive integer, 'auto' or 'auto:N'")


def _output_dir_problem(directory: Path) -> str | None:
    """Why the outputs could not be written there, known before hours of evaluation."""
    existing = next(p for p in (directory, *directory.parents) if p.exists())
    if not existing.is_dir():
        return f"--output_dir {directory}: {existing} is a file, not a directory"
    return None


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoints", nargs="+", help="native checkpoint or HF export dirs")
    parser.add_argument("--names", nargs="+", help="table row names (default: the paths)")
    parser.add_argument("--tasks", default=",".join(CALD_TASKS), help="comma-separated tasks")
    parser.add_argument("--include_path", help="directory of local task YAMLs")
    parser.add_argument("--num_fewshot", type=int, default=0)
    parser.add_argument("--batch_size", type=_batch_size, default="16", help="an integer or 'auto'")
    parser.add_argument(
        "--dtype",
        default="auto",
        type=lambda text: _DTYPE_ALIASES.get(text, text),
        choices=("auto", "float32", "bfloat16", "float16"),
        help="also fp32, bf16, fp16 (as tools/convert_native_to_hf.py takes them)",
    )
    parser.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    parser.add_argument(
        "--tokenizer",
        help="HF tokenizer directory used for every checkpoint, in place of their own "
        "(default: each checkpoint's own; a native one's nearest at or above it)",
    )
    parser.add_argument("--limit", type=float, help="documents per task (testing only)")
    parser.add_argument("--output_dir", default="evals")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    names = args.names or args.checkpoints
    if len(names) != len(args.checkpoints):
        raise SystemExit(f"--names has {len(names)} names for {len(args.checkpoints)} checkpoints")
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:  # results are keyed by name: one row would replace the other
        raise SystemExit(
            f"two checkpoints are named {', '.join(repeated)} (--names, else the paths); "
            "each table row needs its own name"
        )
    missing = [path for path in args.checkpoints if not Path(path).is_dir()]
    if missing:
        raise SystemExit(f"checkpoint directory not found: {', '.join(missing)}")
    problem = _output_dir_problem(Path(args.output_dir))
    if problem:
        raise SystemExit(problem)
    if args.include_path and not Path(args.include_path).is_dir():  # else: "unknown task(s)"
        what = "does not exist" if not Path(args.include_path).exists() else "is not a directory"
        raise SystemExit(
            f"--include_path {args.include_path} {what}; expected the directory of local task YAMLs"
        )
    tasks = [task for task in args.tasks.split(",") if task]
    if not tasks:
        raise SystemExit(f"--tasks {args.tasks!r} names no task; give comma-separated task names")
    from megatron_mamba.evaluation.lm_eval_model import check_checkpoint

    try:  # every checkpoint, before the first is evaluated: a late failure loses the others
        for path in args.checkpoints:
            check_checkpoint(path, args.tokenizer)
        manager = task_manager(args.include_path, tuple(tasks))
        check_tasks(tasks, manager)
        load_task_data(tasks, manager)
    except (OSError, ValueError) as error:  # a missing --tokenizer is a FileNotFoundError
        raise SystemExit(str(error)) from None

    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    model_args = {"dtype": args.dtype, "device": device, "batch_size": args.batch_size}
    if args.tokenizer:
        model_args["tokenizer"] = args.tokenizer
    options = {"num_fewshot": args.num_fewshot, "limit": args.limit}
    results = {}
    for name, path in zip(names, args.checkpoints, strict=True):
        results[name] = evaluate(Checkpoint(name, path), tasks, manager, model_args, **options)
        table = comparison_table(results, tasks)  # written after each: a later failure keeps it
        write_outputs(Path(args.output_dir), results, table)
    print(to_markdown(table), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
