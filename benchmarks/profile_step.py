"""Top CUDA kernels of one training step of ours and of transformers' GPTNeoX (torch.profiler).

torchrun --nproc_per_node 1 benchmarks/profile_step.py
"""

from __future__ import annotations

import torch
from torch.profiler import ProfilerActivity, profile

from benchmarks.attention_model import hf_step, ours_step
from megatron_mamba.models.presets import preset
from megatron_mamba.runtime import init_runtime


def main() -> None:
    init_runtime(seed=0)
    config = preset("pythia-1b")
    tokens = torch.randint(0, config.vocab_size, (4, 2049), device="cuda")
    for name, build in (("transformers", hf_step), ("ours", ours_step)):
        model, step = build(config, tokens)
        for _ in range(3):
            step()
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA, ProfilerActivity.CPU]) as prof:
            step()
            torch.cuda.synchronize()
        print(f"=== {name}")
        print(
            prof.key_averages().table(
                sort_by="cuda_time_total", row_limit=25, max_name_column_width=70
            )
        )
        del model, step
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
