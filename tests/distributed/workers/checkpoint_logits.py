"""Worker: logits of a native checkpoint loaded at a given TP/PP.

Usage: checkpoint_logits.py CHECKPOINT TP PP TOKENS OUT; the last stage's TP rank 0 saves the
whole-vocabulary logits of TOKENS (a saved [batch, seq] tensor) to OUT.
"""

import sys

import torch
from megatron.core import parallel_state as ps
from megatron.core.pipeline_parallel import get_forward_backward_func
from megatron.core.tensor_parallel import gather_from_tensor_model_parallel_region

from megatron_mamba.config import ParallelConfig
from megatron_mamba.models.build import build_model
from megatron_mamba.runtime import ParallelSizes, init_runtime, shutdown_runtime
from megatron_mamba.training.checkpoint import find_checkpoint, load_weights, read_model_config

path, tp, pp, tokens_path, out = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), *sys.argv[4:6]
rt = init_runtime(ParallelSizes(tensor=tp, pipeline=pp), seed=0)
config = read_model_config(path)
model = build_model(config, ParallelConfig(tensor=tp, pipeline=pp)).eval()
load_weights(find_checkpoint(path, path), model)
tokens = torch.load(tokens_path, weights_only=True)
seen = []


def forward_step(batches, model):
    logits = model(next(batches), None, None)

    def keep(local_logits):
        seen.append(gather_from_tensor_model_parallel_region(local_logits))
        return local_logits.sum() * 0, {}

    return logits, keep


with torch.no_grad():
    get_forward_backward_func()(
        forward_step_func=forward_step,
        data_iterator=iter([tokens]),
        model=model,
        num_microbatches=1,
        seq_length=tokens.shape[1],
        micro_batch_size=tokens.shape[0],
        forward_only=True,
    )
if ps.is_pipeline_last_stage() and ps.get_tensor_model_parallel_rank() == 0:
    torch.save(seen[0][..., : config.vocab_size].contiguous(), out)
shutdown_runtime()
