"""lm-eval loglikelihood throughput: our `megatron_mamba` model on a native checkpoint against
lm-eval's `hf` model on the same checkpoint's HF export, in one process, alternating runs.

A random Pythia-160m-shaped hybrid (mamba1, mamba2 and attention layers) answers synthetic
multiple-choice-like requests (a context of 64–384 tokens, a continuation of 1–16) in bf16.
Reports requests/s (median of the rounds; target ratio ≥ 1.0) and how far each model's bf16
log-likelihoods lie from an fp32 evaluation of the same requests (lm-eval's `hf` model in fp32).

python benchmarks/lm_eval_loglikelihood.py --workdir /tmp/ll --out ll.json [--requests 2000]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time
from pathlib import Path

import torch
from lm_eval.api.instance import Instance
from lm_eval.models.huggingface import HFLM
from transformers import AutoTokenizer, GPTNeoXConfig, GPTNeoXForCausalLM

from megatron_mamba.convert.exporter import export_hf
from megatron_mamba.convert.hf_config import hf_config_kwargs
from megatron_mamba.convert.importer import import_hf
from megatron_mamba.evaluation.lm_eval_model import MegatronMambaLM
from megatron_mamba.models.presets import preset
from tests.helpers.tiny_tokenizer import make_tokenizer

PATTERN = "MSMA" * 3
MAMBA = {"layout": "classic", "d_state": 16, "head_dim": 64}


def make_checkpoints(workdir: Path) -> tuple[Path, Path]:
    tokenizer_dir = make_tokenizer(workdir / "hf", vocab_size=300)
    model = GPTNeoXForCausalLM(GPTNeoXConfig(**hf_config_kwargs(preset("pythia-160m"))))
    model.save_pretrained(workdir / "hf")
    del model
    import_hf(workdir / "hf", workdir / "native", layer_pattern=PATTERN, mamba=MAMBA)
    export_hf(workdir / "native", workdir / "export", tokenizer=tokenizer_dir)
    return workdir / "native", workdir / "export"


def make_requests(tokenizer, count: int, seed: int = 0) -> list[Instance]:
    generator = random.Random(seed)
    ids = list(range(10, len(tokenizer)))

    def text(n: int) -> str:
        return tokenizer.decode([generator.choice(ids) for _ in range(n)])

    return [
        Instance(
            request_type="loglikelihood",
            doc={},
            arguments=(text(generator.randint(64, 384)), " " + text(generator.randint(1, 16))),
            idx=i,
        )
        for i in range(count)
    ]


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed(lm, requests) -> tuple[float, list[float]]:
    _sync()
    start = time.perf_counter()
    results = lm.loglikelihood(requests, disable_tqdm=True)
    _sync()
    return len(requests) / (time.perf_counter() - start), [r[0] for r in results]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--reference_requests", type=int, default=500)
    parser.add_argument("--device", default="cuda", help="cpu: a smoke run only")
    args = parser.parse_args()
    native, export = make_checkpoints(args.workdir)
    requests = make_requests(AutoTokenizer.from_pretrained(export), args.requests)
    dtype = "bfloat16" if args.device == "cuda" else "float32"
    settings = {"device": args.device, "dtype": dtype, "batch_size": args.batch_size}
    ours = MegatronMambaLM(pretrained=str(native), **settings)
    theirs = HFLM(pretrained=str(export), **settings)
    timed(ours, requests)  # warm-up: kernels for every shape, allocator
    timed(theirs, requests)
    rates = {"megatron_mamba": [], "hf": []}
    for _ in range(args.rounds):
        rate, ours_ll = timed(ours, requests)
        rates["megatron_mamba"].append(rate)
        rate, theirs_ll = timed(theirs, requests)
        rates["hf"].append(rate)
    medians = {name: statistics.median(values) for name, values in rates.items()}
    del theirs
    reference = HFLM(pretrained=str(export), **{**settings, "dtype": "float32"})
    _, exact = timed(reference, requests[: args.reference_requests])

    def deviation(values: list[float]) -> float:
        return max(abs(a - b) for a, b in zip(values, exact, strict=False))

    result = {
        "requests": args.requests,
        "batch_size": args.batch_size,
        "pattern": PATTERN,
        "requests_per_s": medians,
        "all_rounds": rates,
        "ratio": medians["megatron_mamba"] / medians["hf"],
        "max_abs_deviation_from_fp32": {
            "megatron_mamba": deviation(ours_ll),
            "hf": deviation(theirs_ll),
            "requests_compared": len(exact),
        },
        "device": torch.cuda.get_device_name() if args.device == "cuda" else "cpu",
    }
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
