"""Worker: the training entry point with `train.cuda_graph=true` on CPU, CUDA's capture and
replay stood in by running the captured pass eagerly (GraphedForwardBackward._record);
everything around them (which steps replay, the static batch, the capture's warm-ups and the
objective's cleared sums, a new capture when the graph's key changes, the data-parallel
reduction after the replays) is the real code.

Usage: train_graph_standin.py KEY=VALUE ... ; prints "captures=N replays=M" at the end.
"""

import sys
from types import SimpleNamespace

import megatron_mamba.training.trainer as trainer
from megatron_mamba.train import main
from megatron_mamba.training.cuda_graph import GraphedForwardBackward

counts = {"captures": 0, "replays": 0}


def record(self, forward_backward):
    """A "graph" whose replay runs the pass again, its records written into the same dict."""
    counts["captures"] += 1
    records = {}

    def replay():
        counts["replays"] += 1
        records.update(forward_backward())

    return SimpleNamespace(replay=replay), records


GraphedForwardBackward._record = record
trainer.graph_refusal = lambda run, device: None
trainer.leave_the_default_stream = lambda: None
code = main([*sys.argv[1:], "train.cuda_graph=true"])
print(f"captures={counts['captures']} replays={counts['replays']}")
sys.exit(code)
