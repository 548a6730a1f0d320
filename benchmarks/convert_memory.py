"""Conversion on CPU: a Pythia-1b-shaped random model HF → native (checked for TP=2) → HF.

Each step runs as its own process (the command-line tools); its wall time and peak resident memory
(the child's ru_maxrss) are compared with the model's size in bytes (target peak ≤ 1.5×).

python benchmarks/convert_memory.py --workdir /tmp/convert-bench [--preset pythia-1b]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

_MAKE = """
import sys, torch
from transformers import GPTNeoXConfig, GPTNeoXForCausalLM
from megatron_mamba.convert.hf_config import hf_config_kwargs
from megatron_mamba.models.presets import preset
config = GPTNeoXConfig(**hf_config_kwargs(preset(sys.argv[1])))
with torch.device("meta"):
    model = GPTNeoXForCausalLM(config)
model = model.to_empty(device="cpu")
with torch.no_grad():
    for p in model.parameters():
        p.normal_(0, 0.02)
model.save_pretrained(sys.argv[2], max_shard_size="2GB")
print(sum(p.numel() * p.element_size() for p in model.parameters()))
"""


def _child(argv: list[str], logs: Path) -> tuple[float, int, str]:
    """Run a Python child; (seconds, its own peak RSS in bytes, its stdout)."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "CUDA_VISIBLE_DEVICES": ""}
    out, err = logs.with_suffix(".out"), logs.with_suffix(".err")
    start = time.perf_counter()
    with open(out, "w") as stdout, open(err, "w") as stderr:
        proc = subprocess.Popen(
            [sys.executable, *argv], env=env, stdout=stdout, stderr=stderr, cwd=REPO
        )
        _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status):
        raise SystemExit(f"{argv} failed:\n{err.read_text()[-4000:]}")
    return seconds, usage.ru_maxrss * 1024, out.read_text()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--preset", default="pythia-1b")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    work = args.workdir
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    _, _, made = _child(["-c", _MAKE, args.preset, str(work / "hf")], work / "make")
    size = int(made.strip().splitlines()[-1])
    steps = {
        "hf_to_native": [
            "tools/convert_hf_to_native.py",
            str(work / "hf"),
            str(work / "native"),
            "--tensor-parallel",
            "2",
        ],
        "native_to_hf": ["tools/convert_native_to_hf.py", str(work / "native"), str(work / "back")],
    }
    results = {"preset": args.preset, "model_bytes": size}
    for name, argv in steps.items():
        seconds, peak, _ = _child(argv, work / name)
        results[name] = {"seconds": round(seconds, 1), "peak_rss_bytes": peak}
        results[name]["peak_over_model"] = round(peak / size, 2)
        print(f"{name}: {seconds:.1f} s, peak RSS {peak / 2**30:.2f} GiB = {peak / size:.2f}×")
    print(f"model: {size / 2**30:.2f} GiB")
    if args.out:
        args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
