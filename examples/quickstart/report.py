"""The quickstart's comparison table: for each model its layer pattern, held-out loss and
perplexity (eval/perplexity.py) and the lm-eval scores (eval/run_lm_evals.py, where they were
run), printed and written to OUT/report.md; each run's losses and learning rate drawn to
OUT/<run>.png.

    python examples/quickstart/report.py OUT teacher converted target_guided hybrid
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from megatron_mamba.training.checkpoint import read_model_config
from megatron_mamba.training.plots import plot


def rows(out: Path, names: list[str]) -> list[dict]:
    scored = out / "eval" / "table.json"
    lm_eval = json.loads(scored.read_text()) if scored.is_file() else {"rows": {}, "metrics": {}}
    held_out_by_model = {}
    for line in (out / "eval" / "perplexity.jsonl").read_text().splitlines():
        result = json.loads(line)  # its checkpoint is OUT/<model>/checkpoints/step_N
        held_out_by_model[Path(result["checkpoint"]).parents[1].name] = result
    table = []
    for name in names:
        held_out = held_out_by_model[name]
        scores = lm_eval["rows"].get(name, {})
        table.append(
            {
                "model": name,
                "layers": read_model_config(out / name).layer_pattern,
                "held-out loss": held_out["loss"],
                "held-out ppl": held_out["perplexity"],
                **{
                    f"{task} ({metric})": scores.get(task)
                    for task, metric in lm_eval["metrics"].items()
                },
            }
        )
    return table


def markdown(table: list[dict]) -> str:
    header = list(table[0])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in table:
        cells = [f"{v:.4g}" if isinstance(v, float) else str(v) for v in row.values()]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("names", nargs="+", help="model directories under OUT, in table order")
    args = parser.parse_args()
    text = markdown(rows(args.out, args.names))
    (args.out / "report.md").write_text(text)
    print(text, end="")
    for name in args.names:
        metrics = args.out / name / "metrics.jsonl"
        if metrics.is_file():  # a training run (the converted model has none)
            drawn = plot(metrics, args.out / f"{name}.png")
            print(f"{name}: {', '.join(drawn)} → {args.out / f'{name}.png'}")


if __name__ == "__main__":
    main()
