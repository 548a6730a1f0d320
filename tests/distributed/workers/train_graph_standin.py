"""Worker: the training entry point with `train.cuda_graph=true` on CPU, CUDA's capture and
replay stood in by running the captured pass eagerly; everything around them (which steps
replay, the capture's warm-ups and the objective's cleared sums, a new capture when the graph's
key changes, the data-parallel reduction after the replays) is the real code.

Usage: train_graph_standin.py KEY=VALUE ... ; prints "captures=N replays=M" at the end.
"""

import sys
from types import SimpleNamespace

import torch

import megatron_mamba.training.trainer as trainer
from megatron_mamba.train import main
from megatron_mamba.training.cuda_graph import GraphedForwardBackward, _shapes, _to_device

counts = {"captures": 0, "replays": 0}


def capture(self, forward_step_func, example, num_microbatches):
    """As GraphedForwardBackward._capture: two warm-ups outside the reduction, then a
    "graph" whose replay runs the pass again, its records written into the same dict."""
    counts["captures"] += 1
    self.static_batch = _to_device(example, torch.device("cpu"))
    self.shape = _shapes(self.static_batch)
    run = self.micro_batch_pass(forward_step_func, num_microbatches)
    with self.ddp.no_sync():
        for _ in range(2):
            run()
    self.static_records = {}

    def replay():
        counts["replays"] += 1
        self.static_records.update(run())

    self.graph = SimpleNamespace(replay=replay)
    self.ddp.zero_grad_buffer()


GraphedForwardBackward._capture = capture
trainer.graph_refusal = lambda run, device: None
trainer.leave_the_default_stream = lambda: None
code = main([*sys.argv[1:], "train.cuda_graph=true"])
print(f"captures={counts['captures']} replays={counts['replays']}")
sys.exit(code)
