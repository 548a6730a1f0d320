"""Worker: one forward/backward of a tiny megatron-core GPT at a given TP/PP on fixed weights.

Usage: gpt_step.py TP PP OUT_DIR [FULL_STATE]. Without FULL_STATE the run must be single-process
and saves its initial weights as the full state. Each rank writes its losses and gradients.
"""

import sys
from pathlib import Path

import torch
from megatron.core import parallel_state as ps
from megatron.core.models.gpt import GPTModel
from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec
from megatron.core.pipeline_parallel import get_forward_backward_func
from megatron.core.transformer.transformer_config import TransformerConfig

from megatron_mamba.models.attention import SDPAttention
from megatron_mamba.parallel.shards import load_full_state, local_shards
from megatron_mamba.runtime import ParallelSizes, init_runtime, shutdown_runtime

tp, pp, out_dir = int(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3])
full_state_path = sys.argv[4] if len(sys.argv) > 4 else None
rt = init_runtime(ParallelSizes(tensor=tp, pipeline=pp), seed=0)

config = TransformerConfig(
    num_layers=4,
    hidden_size=64,
    num_attention_heads=4,
    num_query_groups=2,
    use_cpu_initialization=True,
    pipeline_dtype=torch.float32,
    batch_p2p_sync=False,
    hidden_dropout=0.0,
    attention_dropout=0.0,
    tensor_model_parallel_size=tp,
    pipeline_model_parallel_size=pp,
)
spec = get_gpt_layer_local_spec()
spec.submodules.self_attention.submodules.core_attention = SDPAttention
model = GPTModel(
    config,
    spec,
    vocab_size=128,
    max_sequence_length=32,
    position_embedding_type="rope",
    share_embeddings_and_output_weights=False,
    pre_process=ps.is_pipeline_first_stage(),
    post_process=ps.is_pipeline_last_stage(),
)
model.to(rt.device)
if full_state_path is None:
    assert rt.world_size == 1, "the reference run is single-process"
    torch.save({k: v.cpu() for k, (v, _) in local_shards(model).items()}, out_dir / "full_state.pt")
else:
    load_full_state(model, torch.load(full_state_path, weights_only=True))

tokens = torch.randint(0, 128, (4, 17), generator=torch.Generator().manual_seed(1)).to(rt.device)


def forward_step(batches, model):
    batch = next(batches)
    per_token = model(batch[:, :-1], None, None, labels=batch[:, 1:])

    def loss_func(output):
        loss = output.float().mean()
        return loss, {"loss": loss.detach()}

    return per_token, loss_func


losses = get_forward_backward_func()(
    forward_step_func=forward_step,
    data_iterator=iter(tokens.split(2)),
    model=model,
    num_microbatches=2,
    seq_length=16,
    micro_batch_size=2,
    forward_only=False,
)
torch.save(
    {
        "losses": [x["loss"].cpu() for x in losses],
        "grads": {k: (v.cpu(), tuple(p)) for k, (v, p) in local_shards(model, grads=True).items()},
        "tp_rank": ps.get_tensor_model_parallel_rank(),
        "backend": rt.backend,
    },
    out_dir / f"rank{rt.rank}.pt",
)
shutdown_runtime()
