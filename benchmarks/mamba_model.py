"""Training-step throughput of our all-Mamba Pythia-1b against CALD's student built from
transformers' classes, bf16, one GPU, same process.

CALD (lm/open_instruct/modeling_hybrid_mamba.py) keeps GPTNeoX's blocks (two LayerNorms, parallel
residual, GeLU MLP) and puts transformers' `MambaMixer` in place of attention, configured from
mamba-2.8b-hf with only hidden_size changed: d_inner 5120, dt_rank 160, d_state 16. The mamba2 row
uses transformers' `Mamba2Mixer` (head_dim 64, one group, d_state 128) the same way. Ours: the same
shapes from the layer pattern "M"×16 / "S"×16. Forward + backward + fused AdamW step for each;
ours again with that AdamW in one Triton launch (train.adam_kernel=one_launch).

`--graphed` adds ours (one-launch Adam) with its forward and backward replayed from a CUDA
graph, as train.cuda_graph=true runs it (its peak memory is what the allocator reserves, the
graph's pool included).

`--rounds R` then builds the sides together and times them taking turns for R rounds
(the baseline's speed moved by 10% between sessions on this shared machine).

    torchrun --nproc_per_node 1 benchmarks/mamba_model.py --out $OUT/mamba_model.json [--rounds 3]
"""

from __future__ import annotations

import argparse
import gc
from functools import partial

import torch
import torch.nn.functional as F

from benchmarks import attention_model
from benchmarks.common import (
    interleaved_speedups,
    median_step_seconds,
    peak_memory,
    print_speedups,
    save_report,
)
from megatron_mamba.config import ModelConfig
from megatron_mamba.convert.hf_mamba_config import (
    transformers_mamba2_config,
    transformers_mamba_config,
)
from megatron_mamba.models.mamba_dims import mamba1_dims, mamba2_dims
from megatron_mamba.models.presets import preset
from megatron_mamba.runtime import init_runtime

CALD_MAMBA1 = dict(layout="classic", d_inner=5120, dt_rank=160, d_state=16)
MAMBA2 = dict(layout="classic", head_dim=64, groups=1, d_state=128, chunk_size=256)


class CaldBlock(torch.nn.Module):
    """GPTNeoX's parallel-residual block around a transformers Mamba mixer, as CALD builds it."""

    def __init__(self, mixer: torch.nn.Module, gpt_neox_config):
        from transformers.models.gpt_neox.modeling_gpt_neox import GPTNeoXMLP

        super().__init__()
        h = gpt_neox_config.hidden_size
        self.input_layernorm = torch.nn.LayerNorm(h, eps=gpt_neox_config.layer_norm_eps)
        self.post_attention_layernorm = torch.nn.LayerNorm(h, eps=gpt_neox_config.layer_norm_eps)
        self.mixer = mixer
        self.mlp = GPTNeoXMLP(gpt_neox_config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.mixer(self.input_layernorm(x)) + self.mlp(self.post_attention_layernorm(x))


class CaldModel(torch.nn.Module):
    def __init__(self, config: ModelConfig, kind: str):
        from transformers import GPTNeoXConfig
        from transformers.models.mamba.modeling_mamba import MambaMixer
        from transformers.models.mamba2.modeling_mamba2 import Mamba2Mixer

        super().__init__()
        neox = GPTNeoXConfig(
            hidden_size=config.hidden_size,
            intermediate_size=config.ffn_hidden_size,
            num_attention_heads=config.num_attention_heads,
            num_hidden_layers=config.num_layers,
            vocab_size=config.vocab_size,
        )
        n = config.num_layers
        if kind == "mamba1":
            mamba = transformers_mamba_config(mamba1_dims(config), n)
            mixers = [MambaMixer(mamba, layer_idx=i) for i in range(n)]
        else:
            mamba = transformers_mamba2_config(mamba2_dims(config), n)
            mixers = [Mamba2Mixer(mamba, layer_idx=i) for i in range(n)]
        self.embed_in = torch.nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = torch.nn.ModuleList(CaldBlock(m, neox) for m in mixers)
        self.final_layer_norm = torch.nn.LayerNorm(config.hidden_size)
        self.embed_out = torch.nn.Linear(config.hidden_size, config.vocab_size, bias=False)

    def blocks_and_logits(self, tokens: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Each block's output [b, s, h] and the logits."""
        x, blocks = self.embed_in(tokens), []
        for layer in self.layers:
            x = layer(x)
            blocks.append(x)
        return blocks, self.embed_out(self.final_layer_norm(x))

    def forward(self, tokens: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        _, logits = self.blocks_and_logits(tokens)
        return F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten())


def cald_step(config, kind, tokens):
    model = CaldModel(config, kind).to(device="cuda", dtype=torch.bfloat16).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=True)

    def step():
        model(tokens[:, :-1], tokens[:, 1:]).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return model, step


def ours_step(config, kind, tokens, one_launch_adam=False):
    """Our model from the pattern; the same step as the attention benchmark's."""
    return attention_model.ours_step(config, tokens, one_launch_adam)


def graphed_ours_step(config, kind, tokens):
    return attention_model.graphed_ours_step(config, tokens)


def measure(name, build, config, kind, tokens, seq):
    model, step = build(config, kind, tokens)
    params = sum(p.numel() for p in model.parameters())
    seconds = median_step_seconds(step)
    allocated, reserved = peak_memory(step)
    memory = reserved if build is graphed_ours_step else allocated
    del model, step
    gc.collect()
    torch.cuda.empty_cache()
    return {
        "name": name,
        "kind": kind,
        "params": params,
        "tokens_per_s": tokens.shape[0] * seq / seconds,
        "peak_gib": memory,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seq", type=int, default=2048)
    parser.add_argument("--micro-batch", type=int, default=4)
    parser.add_argument("--kinds", default="mamba1,mamba2")
    parser.add_argument("--out")
    parser.add_argument(
        "--rounds",
        type=int,
        default=0,
        help="then build the sides together and time them taking turns, this many rounds",
    )
    parser.add_argument("--graphed", action="store_true", help="also ours with CUDA graphs")
    parser.add_argument(
        "--clocks",
        action="store_true",
        help="with --rounds: each side's median SM clock and power (benchmarks/gpu_clocks.py)",
    )
    args = parser.parse_args()
    if args.clocks and not args.rounds:
        parser.error("--clocks samples the interleaved rounds: give --rounds too")
    init_runtime(seed=0)
    rows, interleaved = [], {}
    for kind in args.kinds.split(","):
        symbol, mamba = {"mamba1": ("M", CALD_MAMBA1), "mamba2": ("S", MAMBA2)}[kind]
        config = preset("pythia-1b", layer_pattern=symbol * 16, mamba=mamba)
        shape = (args.micro_batch, args.seq + 1)
        tokens = torch.randint(0, config.vocab_size, shape, device="cuda")
        base = measure(f"CALD-style ({kind})", cald_step, config, kind, tokens, args.seq)
        ours = measure(f"megatron-mamba ({kind})", ours_step, config, kind, tokens, args.seq)
        one_launch = measure(
            f"megatron-mamba ({kind}), one-launch Adam",
            partial(ours_step, one_launch_adam=True),
            config,
            kind,
            tokens,
            args.seq,
        )
        sides = [base, ours, one_launch]
        if args.graphed:
            name = f"megatron-mamba ({kind}), one-launch Adam, CUDA graph"
            sides.append(measure(name, graphed_ours_step, config, kind, tokens, args.seq))
        for row in sides:
            row["speedup"] = row["tokens_per_s"] / base["tokens_per_s"]
            rows.append(row)
        if args.rounds:
            builds = {
                "CALD-style": cald_step,
                "megatron-mamba": ours_step,
                "megatron-mamba, one-launch Adam": partial(ours_step, one_launch_adam=True),
            }
            if args.graphed:
                builds["megatron-mamba, one-launch Adam, CUDA graph"] = graphed_ours_step
            steps = {name: build(config, kind, tokens)[1] for name, build in builds.items()}
            interleaved[kind] = interleaved_speedups(steps, args.rounds, clocks=args.clocks)
            del steps
            gc.collect()
            torch.cuda.empty_cache()
    print("| model | params | tokens/s | × transformers | peak GiB |\n|---|---|---|---|---|")
    for row in rows:
        print(
            f"| {row['name']} | {row['params'] / 1e9:.2f}B | {row['tokens_per_s']:,.0f} | "
            f"{row['speedup']:.2f} | {row['peak_gib']:.1f} |"
        )
    for kind, report in interleaved.items():
        print_speedups(report, f"taking turns, {args.rounds} rounds ({kind})")
    save_report(args.out, {"args": vars(args), "rows": rows, "interleaved": interleaved})


if __name__ == "__main__":
    main()
