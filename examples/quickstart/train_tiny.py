"""A tiny GPTNeoX (our megatron-core model) trained for a few steps on the built-in corpus.

Byte tokens (vocabulary 256). Run under torchrun; the runtime picks gloo on CPU and nccl on GPU,
and the tensor-parallel size from --tp.
"""

import argparse
from pathlib import Path

import torch
from megatron.core.pipeline_parallel import get_forward_backward_func

from megatron_mamba.config import ParallelConfig
from megatron_mamba.models.build import build_model
from megatron_mamba.models.presets import preset
from megatron_mamba.runtime import ParallelSizes, init_runtime, shutdown_runtime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tp", type=int, default=1)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--seq-length", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=8)
    args = parser.parse_args()

    rt = init_runtime(ParallelSizes(tensor=args.tp), seed=0)
    config = preset("tiny-gpt-neox", max_position_embeddings=args.seq_length)
    model = build_model(config, ParallelConfig(tensor=args.tp)).to(rt.device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)

    data = torch.tensor(list((Path(__file__).parent / "corpus.txt").read_bytes()))
    generator = torch.Generator().manual_seed(rt.rank // args.tp)

    def forward_step(_, model):
        starts = torch.randint(
            0, len(data) - args.seq_length - 1, (args.batch_size,), generator=generator
        )
        batch = torch.stack([data[s : s + args.seq_length + 1] for s in starts]).to(rt.device)
        per_token = model(batch[:, :-1], None, None, labels=batch[:, 1:])
        return per_token, lambda out: (out.float().mean(), {"loss": out.float().mean().detach()})

    for step in range(1, args.steps + 1):
        optimizer.zero_grad()
        losses = get_forward_backward_func()(
            forward_step_func=forward_step,
            data_iterator=None,
            model=model,
            num_microbatches=1,
            seq_length=args.seq_length,
            micro_batch_size=args.batch_size,
        )
        optimizer.step()
        if rt.is_main and (step == 1 or step % 10 == 0):
            print(f"step {step:3d}  loss {losses[0]['loss'].item():.3f}", flush=True)
    shutdown_runtime()


if __name__ == "__main__":
    main()
