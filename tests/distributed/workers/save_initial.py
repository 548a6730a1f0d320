"""Worker: build a model from training overrides (one process) and save its whole tensors.

Usage: save_initial.py OUT_FILE KEY=VALUE ... (the same overrides the trainer takes)
"""

import sys

import torch

from megatron_mamba.config_io import load
from megatron_mamba.models.build import build_model
from megatron_mamba.parallel.shards import local_shards
from megatron_mamba.runtime import init_runtime, shutdown_runtime
from megatron_mamba.training.run_config import RunConfig

run = load(RunConfig, None, sys.argv[2:])
init_runtime(seed=run.train.seed)
model = build_model(run.model_config(), run.parallel)
torch.save({k: v for k, (v, _) in local_shards(model).items()}, sys.argv[1])
shutdown_runtime()
