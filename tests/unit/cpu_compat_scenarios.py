"""Each scenario exercises one CUDA assumption of megatron-core; run as a subprocess.

Usage: cpu_compat_scenarios.py SCENARIO [PATCH ...]  (applies only the named CPU patches)
"""

import sys

import torch
import torch.distributed as dist

from megatron_mamba.runtime.cpu_compat import apply_cpu_compat


def _world_of_one():
    from megatron.core import parallel_state

    dist.init_process_group("gloo", init_method="tcp://127.0.0.1:0", rank=0, world_size=1)
    parallel_state.initialize_model_parallel()


def rng_tracker():
    from megatron.core.tensor_parallel import get_cuda_rng_tracker, model_parallel_cuda_manual_seed

    _world_of_one()
    model_parallel_cuda_manual_seed(7)
    with get_cuda_rng_tracker().fork():
        torch.rand(3)


def current_device():
    from megatron.core.models.common.embeddings.rotary_pos_embedding import RotaryEmbedding

    RotaryEmbedding(kv_channels=16, rotary_percent=1.0)(8)


def schedule_cuda_literals():
    from megatron.core.enums import ModelType
    from megatron.core.pipeline_parallel import get_forward_backward_func
    from megatron.core.transformer.transformer_config import TransformerConfig

    _world_of_one()

    class Tiny(torch.nn.Linear):
        def set_input_tensor(self, tensor):
            pass

    model = Tiny(4, 1)
    model.config = TransformerConfig(num_layers=1, hidden_size=4, num_attention_heads=1)
    model.model_type = ModelType.encoder_or_decoder

    def step(data, model):
        out = model(next(data))
        return out, lambda o: (o.sum(), {})

    get_forward_backward_func()(
        forward_step_func=step,
        data_iterator=iter([torch.ones(2, 4)]),
        model=model,
        num_microbatches=1,
        seq_length=1,
        micro_batch_size=2,
    )


def checkpoint_rng_states():
    from megatron.core.tensor_parallel import checkpoint, model_parallel_cuda_manual_seed

    _world_of_one()
    model_parallel_cuda_manual_seed(3)
    x = torch.randn(4, requires_grad=True)
    checkpoint(lambda t: (t * 2).sin(), False, x).sum().backward()
    assert torch.allclose(x.grad, 2 * (2 * x.detach()).cos())


def tied_embedding_copy():
    """Needs two processes (torchrun): the last stage's tied output layer."""
    from megatron.core import parallel_state

    from megatron_mamba.config import ModelConfig, ParallelConfig
    from megatron_mamba.models.build import build_model

    dist.init_process_group("gloo")
    parallel_state.initialize_model_parallel(pipeline_model_parallel_size=2)
    config = ModelConfig(
        arch="llama",
        num_layers=2,
        hidden_size=32,
        num_attention_heads=2,
        ffn_hidden_size=64,
        vocab_size=128,
        tie_embeddings=True,
    )
    build_model(config, ParallelConfig(pipeline=2))


def optimizer_cuda_literals():
    from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig
    from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer
    from megatron.core.transformer.module import MegatronModule
    from megatron.core.transformer.transformer_config import TransformerConfig

    _world_of_one()
    config = TransformerConfig(num_layers=1, hidden_size=8, num_attention_heads=1)

    class Tiny(MegatronModule):
        def __init__(self):
            super().__init__(config=config)
            self.weight = torch.nn.Parameter(torch.ones(4))

    ddp = DistributedDataParallel(config, DistributedDataParallelConfig(), Tiny())
    optimizer = get_megatron_optimizer(
        OptimizerConfig(lr=0.1, clip_grad=1.0, weight_decay=0.0), [ddp]
    )
    ddp.zero_grad_buffer()
    (ddp.module.weight * 3.0).sum().backward()
    ddp.finish_grad_sync()
    ok, grad_norm, _ = optimizer.step()
    assert ok and abs(grad_norm - 6.0) < 1e-5, grad_norm
    # Adam's first step moves each weight by lr against the sign of its (clipped) gradient.
    torch.testing.assert_close(ddp.module.weight.detach(), torch.full((4,), 0.9))


def checkpoint_cuda_literals():
    import tempfile

    from megatron.core import dist_checkpointing
    from megatron.core.dist_checkpointing.mapping import ShardedTensor

    from megatron_mamba.training.checkpoint import in_process_results

    _world_of_one()
    in_process_results()
    weight = torch.arange(6.0)
    with tempfile.TemporaryDirectory() as directory:
        dist_checkpointing.save({"w": ShardedTensor.from_rank_offsets("w", weight)}, directory)
        target = {"w": ShardedTensor.from_rank_offsets("w", torch.zeros(6))}
        loaded = dist_checkpointing.load(target, directory)
    torch.testing.assert_close(loaded["w"], weight)


TWO_PROCESSES = {"tied_embedding_copy"}


if __name__ == "__main__":
    scenario, patches = sys.argv[1], sys.argv[2:]
    apply_cpu_compat(only=patches)
    globals()[scenario]()
    print("scenario ok")
