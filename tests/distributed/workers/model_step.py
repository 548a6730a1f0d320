"""Worker: logits, loss and gradients of our model at a given TP/PP(/SP) on fixed weights.

Usage: model_step.py KIND TP PP SP OUT_DIR [FULL_STATE]; data parallelism takes the rest of the
world. KIND names a tiny transformers config
(gpt_neox, gpt_neox_sequential, llama_tied), or one of them with Mamba layers (gpt_neox_hybrid:
classic mamba1/mamba2; llama_hybrid: MambaInLlama's attention-shaped layout). Without
FULL_STATE the run is the single-process reference and saves its initial weights. A KIND ending
in _fused runs its classic Mamba1 mixers through the one function (kernels/mamba1_fused.py) over
stand-ins for its CUDA kernels (tests/helpers/fake_mamba_kernels.py).
"""

import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from megatron.core import parallel_state as ps
from megatron.core.pipeline_parallel import get_forward_backward_func
from megatron.core.tensor_parallel import gather_from_tensor_model_parallel_region

from megatron_mamba.config import ParallelConfig
from megatron_mamba.convert.hf_config import model_config_from_hf
from megatron_mamba.models.build import build_model
from megatron_mamba.parallel.shards import load_full_state, local_shards
from megatron_mamba.runtime import ParallelSizes, init_runtime, shutdown_runtime
from megatron_mamba.training.ddp import wrap_ddp
from tests.helpers import fake_mamba_kernels
from tests.helpers.hf_tiny import VOCAB, tiny_gpt_neox, tiny_llama

kind, tp, pp, sp, out_dir = (
    sys.argv[1],
    int(sys.argv[2]),
    int(sys.argv[3]),
    sys.argv[4],
    sys.argv[5],
)
full_state_path = sys.argv[6] if len(sys.argv) > 6 else None
one_function_calls = [0]
if kind.endswith("_fused"):
    kind = kind.removesuffix("_fused")
    one_function_calls = fake_mamba_kernels.route_mamba1_mixer(pytest.MonkeyPatch())
rt = init_runtime(ParallelSizes(tensor=tp, pipeline=pp), seed=0)
hf = {
    "gpt_neox": lambda: tiny_gpt_neox(True, layers=4),
    "gpt_neox_sequential": lambda: tiny_gpt_neox(False, layers=4),
    "llama_tied": lambda: tiny_llama(tied=True, layers=4),
    "gpt_neox_hybrid": lambda: tiny_gpt_neox(True, layers=4),
    "llama_hybrid": lambda: tiny_llama(tied=True, layers=4),
}[kind]()
hybrid = {
    "gpt_neox_hybrid": dict(
        layer_pattern="MASM",
        mamba=dict(layout="classic", d_state=16, head_dim=16, groups=2, chunk_size=8),
    ),
    "llama_hybrid": dict(layer_pattern="SMAM", mamba=dict(layout="attention")),
}
config = model_config_from_hf(hf.config, **hybrid.get(kind, {}))
parallel = ParallelConfig(tensor=tp, pipeline=pp, sequence_parallel=sp == "sp")
model = build_model(config, parallel).to(rt.device)
if full_state_path is None:
    torch.save({k: v.cpu() for k, (v, _) in local_shards(model).items()}, Path(out_dir) / "full.pt")
else:
    load_full_state(model, torch.load(full_state_path, weights_only=True))
ddp = wrap_ddp(model)

tokens = torch.randint(0, VOCAB, (4, 17), generator=torch.Generator().manual_seed(1))
logits_seen = []


def forward_step(batches, model):
    batch = next(batches).to(rt.device)
    logits = model(batch[:, :-1], None, None)

    def loss_func(local_logits):
        whole = gather_from_tensor_model_parallel_region(local_logits)
        logits_seen.append(whole.detach().cpu())
        loss = F.cross_entropy(whole.flatten(0, 1).float(), batch[:, 1:].flatten())
        return loss, {"loss": loss.detach()}

    return logits, loss_func


# Two micro-batches of 2: one process runs both; with data parallelism each replica runs one.
micro_batches = tokens.split(2)
if rt.data_parallel_size > 1:
    micro_batches = micro_batches[ps.get_data_parallel_rank() :: rt.data_parallel_size]
ddp.zero_grad_buffer()
losses = get_forward_backward_func()(
    forward_step_func=forward_step,
    data_iterator=iter(micro_batches),
    model=ddp,
    num_microbatches=len(micro_batches),
    seq_length=16,
    micro_batch_size=2,
)
torch.save(
    {
        "losses": [x["loss"].cpu() for x in losses],
        "logits": logits_seen,
        "grads": {k: (v.cpu(), tuple(p)) for k, (v, p) in local_shards(model, grads=True).items()},
        "tp_rank": ps.get_tensor_model_parallel_rank(),
        "dp_rank": ps.get_data_parallel_rank(),
        "one_function_calls": one_function_calls[0],
    },
    Path(out_dir) / f"rank{rt.rank}.pt",
)
shutdown_runtime()
