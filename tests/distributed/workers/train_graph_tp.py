"""Worker: the training entry point with `train.cuda_graph=true` allowed at tensor parallel
sizes above 1, which the trainer refuses until the GPU test that uses this worker
(tests/gpu/test_cuda_graph_gpu.py, two GPUs) has passed.

Usage: train_graph_tp.py KEY=VALUE ...
"""

import dataclasses
import sys

import megatron_mamba.training.trainer as trainer
from megatron_mamba.train import main
from megatron_mamba.training.cuda_graph import graph_refusal


def refusal_beside_tp(run, device):
    """What the trainer would refuse were the run at TP=1 without sequence parallelism."""
    one = dataclasses.replace(run.parallel, tensor=1, sequence_parallel=False)
    return graph_refusal(dataclasses.replace(run, parallel=one), device)


trainer.graph_refusal = refusal_beside_tp
sys.exit(main(sys.argv[1:]))
