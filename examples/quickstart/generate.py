"""Load an exported hybrid with transformers alone and let it write: the proof that the student
leaves this codebase as an ordinary transformers model (AutoModelForCausalLM, generate, cache).

    python examples/quickstart/generate.py EXPORT_DIR [--prompt TEXT ...] [--tokens 24]
"""

from __future__ import annotations

import argparse

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

import megatron_mamba.hf  # noqa: F401  (registers the hybrid classes with transformers' Auto*)

PROMPTS = ["The teacher", "Tensor parallelism", "A layer pattern"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("export")
    parser.add_argument("--prompt", action="append", help="default: three openings")
    parser.add_argument("--tokens", type=int, default=24)
    args = parser.parse_args()
    tokenizer = AutoTokenizer.from_pretrained(args.export)
    model = AutoModelForCausalLM.from_pretrained(args.export).eval()
    pattern = getattr(model.config, "layer_pattern", "attention only")
    print(f"{type(model).__name__} from {args.export} (layer pattern {pattern})")
    for prompt in args.prompt or PROMPTS:
        inputs = tokenizer(prompt, return_tensors="pt")
        with torch.no_grad():
            out = model.generate(**inputs, max_new_tokens=args.tokens, do_sample=False)
        print(f"  {prompt!r} → {tokenizer.decode(out[0], skip_special_tokens=True)!r}")


if __name__ == "__main__":
    main()
