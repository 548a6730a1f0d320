"""megatron's optimizer as the trainer builds it, with fused Adam and multi-tensor helpers.

Without apex or Transformer Engine (neither is a dependency here), megatron-core 0.16.1 falls
back to torch's AdamW with its default multi-kernel `foreach` update, and to Python loops for
its multi-tensor helpers: the gradient norm makes one host sync per parameter tensor (it builds
a tensor from a list of device scalars), clipping and the master-to-model weight copy launch one
kernel per tensor. On a 1.2B model that made the optimizer step 27 ms where one pass over the
memory takes about 10. Here the inner AdamW runs torch's single fused kernel (on GPUs by default
training/adamw.py's one-launch step instead, train.adam_kernel), and the helpers are torch's
`_foreach` kernels, which compute the same values.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from megatron.core import utils as megatron_utils
from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer

from megatron_mamba.runtime.cpu_compat import clip_grads_by_total_norm
from megatron_mamba.training.adamw import (
    defer_grad_scale,
    plan_before_clipping,
    use_one_launch_adam,
    write_model_weights_in_step,
)
from megatron_mamba.training.param_groups import megatron_weight_decay_overrides
from megatron_mamba.training.run_config import RunConfig

_FUSED_ADAM_DEVICES = ("cuda", "cpu")


MIN_LOSS_SCALE = 1.0
"""fp16: the dynamic loss scale goes no lower; an overflow there counts as a bad step."""


def build_optimizer(model, ddp, run: RunConfig):
    """megatron's optimizer for `ddp` (clipping, fp32 master weights under bf16/fp16 unless
    train.fp32_master_weights is false, loss scaling under fp16; sharded over data-parallel
    ranks with train.use_distributed_optimizer, which `ddp` must have been wrapped for), Adam
    with decoupled weight decay, fused where torch supports it."""
    train = run.train
    config = OptimizerConfig(
        optimizer="adam",
        lr=train.learning_rate,
        min_lr=train.min_lr,
        weight_decay=train.weight_decay,
        adam_beta1=train.adam_beta1,
        adam_beta2=train.adam_beta2,
        adam_eps=train.adam_eps,
        clip_grad=train.clip_grad_norm or 0.0,
        bf16=train.mixed_precision == "bf16" and train.fp32_master_weights,
        fp16=train.mixed_precision == "fp16",
        initial_loss_scale=train.initial_loss_scale,
        min_loss_scale=MIN_LOSS_SCALE,
        loss_scale_window=train.loss_scale_window,
        params_dtype=model.config.params_dtype,
        use_distributed_optimizer=train.use_distributed_optimizer,
    )
    overrides = megatron_weight_decay_overrides(model, train.weight_decay_mamba_only)
    one_launch = train.adam_kernel == "one_launch"
    return megatron_optimizer(ddp, config, overrides, one_launch_adam=one_launch)


def megatron_optimizer(ddp, config: OptimizerConfig, overrides=None, one_launch_adam=False):
    """`get_megatron_optimizer` for one DDP-wrapped model, with fused Adam (or, with
    `one_launch_adam`, training/adamw.py's, which under fp32 master weights also writes the
    model weights) and `_foreach` multi-tensor helpers."""
    use_foreach_multi_tensor_ops()
    optimizer = get_megatron_optimizer(config, [ddp], config_overrides=overrides)
    fuse_adam(optimizer)
    if one_launch_adam:
        for inner in inner_optimizers(optimizer):
            use_one_launch_adam(inner)
        for part in getattr(optimizer, "chained_optimizers", [optimizer]):
            write_model_weights_in_step(part)
            plan_before_clipping(part)
    return optimizer


@contextmanager
def grads_prepared_now(optimizer) -> Iterator[None]:
    """Run megatron's `prepare_grads` now, and have the `optimizer.step()` made inside this
    block use its result instead of preparing again. The trainer enters it as soon as backward
    is queued: preparing (and the one-launch Adam's planning inside it) is host work, which then
    overlaps the GPU's backward instead of leaving the GPU idle after the trainer's loss and NaN
    checks have waited for it. Leaving the block drops an unused result (a skipped step)."""
    prepare = optimizer.prepare_grads
    had_own = "prepare_grads" in vars(optimizer)  # e.g. set by plan_before_clipping
    prepared = [prepare()]

    def once_prepared() -> bool:
        return prepared.pop() if prepared else prepare()

    optimizer.prepare_grads = once_prepared
    try:
        yield
    finally:
        if had_own:
            optimizer.prepare_grads = prepare
        else:
            del optimizer.prepare_grads


def inner_optimizers(optimizer) -> list[torch.optim.Optimizer]:
    """The torch optimizers inside megatron's wrappers (one per chained optimizer)."""
    chained = getattr(optimizer, "chained_optimizers", [optimizer])
    return [part.optimizer for part in chained if getattr(part, "optimizer", None) is not None]


def fuse_adam(optimizer) -> None:
    """Switch megatron's inner torch Adam/AdamW to torch's fused kernel (one launch per device
    and dtype instead of several per step stage); a no-op where fusing is not supported."""
    for inner in inner_optimizers(optimizer):
        if not isinstance(inner, torch.optim.Adam | torch.optim.AdamW):
            continue
        params = [p for group in inner.param_groups for p in group["params"]]
        if not params or any(p.device.type not in _FUSED_ADAM_DEVICES for p in params):
            continue
        if any(not p.is_floating_point() for p in params) or inner.state:
            continue  # fused needs float tensors, and device step counters from the first step
        for group in inner.param_groups:
            group["fused"], group["foreach"] = True, False
        inner._step_supports_amp_scaling = True


def _foreach_l2_norm(chunk_size, noop_flag, tensor_lists, per_tensor, *args):
    """amp_C.multi_tensor_l2norm's contract: (total L2 norm as a 1-element float tensor, None);
    accumulated in fp32 whatever the gradients' dtype (bf16 without master weights)."""
    tensors = tensor_lists[0]
    norms = torch._foreach_norm(tensors, 2, dtype=torch.float32)
    total = torch.linalg.vector_norm(torch.stack(norms))
    return total.reshape(1), None


def _foreach_scale(chunk_size, noop_flag, tensor_lists, scale):
    """amp_C.multi_tensor_scale's contract: tensor_lists[1][i] = tensor_lists[0][i] * scale."""
    sources, targets = tensor_lists[0], tensor_lists[1]
    if scale != 1.0:
        sources = torch._foreach_mul(sources, scale)
    torch._foreach_copy_(targets, sources)


def _clip_grads(parameters, max_norm, total_norm, use_decoupled_grad=False):
    """megatron's clipping by the total norm; the multiplication left to the one-launch Adam
    where it owns the parameters (training/adamw.py), else done here."""
    coefficient = max_norm / (total_norm + 1.0e-6)
    params = [parameters] if isinstance(parameters, torch.Tensor) else list(parameters)
    if coefficient < 1.0 and not use_decoupled_grad and defer_grad_scale(params, coefficient):
        return
    clip_grads_by_total_norm(params, max_norm, total_norm, use_decoupled_grad)


def use_foreach_multi_tensor_ops() -> None:
    """Replace megatron's Python-loop fallbacks (used only when neither apex nor Transformer
    Engine is installed) with `_foreach` versions; apex's or TE's kernels are left alone.
    Gradient clipping also takes bf16 gradients (no fp32 master weights), which megatron's
    asserts away."""
    from megatron.core.optimizer import clip_grads
    from megatron.core.optimizer import optimizer as megatron_optimizer

    megatron_optimizer.clip_grad_by_total_norm_fp32 = _clip_grads
    if clip_grads.l2_norm_impl is megatron_utils.local_multi_tensor_l2_norm:
        clip_grads.l2_norm_impl = _foreach_l2_norm
    if clip_grads.multi_tensor_scale_impl is megatron_utils.local_multi_tensor_scale:
        clip_grads.multi_tensor_scale_impl = _foreach_scale
    if megatron_optimizer.multi_tensor_scale_impl is megatron_utils.local_multi_tensor_scale:
        megatron_optimizer.multi_tensor_scale_impl = _foreach_scale
