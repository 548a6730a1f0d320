"""torch's Adam/AdamW with each parameter group stepped by one Triton launch on GPU.

`use_one_launch_adam(optimizer)` turns the torch Adam(W) inside megatron's optimizer into the
matching class below: the state is torch's own (made by its `_init_group`, as its fused kernel
keeps it: a float32 step count on the parameter's device, moved there where torch's other
steps kept it on the host, and moments like the parameter), so
checkpoints move between the two freely, and every step a group the kernel does not take (CPU
tensors, AMSGrad, maximize, a tensor learning rate, mixed dtypes) runs torch's step instead.
Gradient clipping may leave its multiplication to the kernel (`defer_grad_scale`), which
saves a pass over the gradients; under megatron's fp32 master weights the kernel also writes the
bf16/fp16 model weights (`write_model_weights_in_step`), which saves megatron's copy after the
update. The kernel: megatron_mamba/kernels/adamw.py.
"""

from __future__ import annotations

import functools
import weakref

import torch
from torch.utils.weak import WeakIdKeyDictionary

from megatron_mamba.kernels.tensor_blocks import TensorBlocks

_OWNER = WeakIdKeyDictionary()
"""Each parameter of a one-launch optimizer: a weak reference to that optimizer."""


class _OneLaunchStep:
    @torch.no_grad()
    def step(self, closure=None):
        grad_scale = self.__dict__.pop("_pending_grad_scale", 1.0)
        self._model_weights_written = set()
        groups = None if closure else [self._kernel_lists(group) for group in self.param_groups]
        if groups is None or any(lists is None for lists in groups):
            if grad_scale != 1.0:
                self._scale_grads(grad_scale)
            return super().step(closure)
        from megatron_mamba.kernels import adamw

        tables = self.__dict__.setdefault("_one_launch_tables", {})
        model_weights = self.__dict__.get("_model_weights")
        for index, (group, lists) in enumerate(zip(self.param_groups, groups, strict=True)):
            if not lists[0]:
                continue
            copies = None
            if model_weights is not None:
                models = [model_weights.get(p) for p in lists[0]]
                copies = None if any(m is None for m in models) else [m.data for m in models]
                if copies is not None and not adamw.takes_copies(lists[0], copies):
                    copies = None
            torch._foreach_add_(lists[4], 1)
            beta1, beta2 = group["betas"]
            adamw.adam_step(
                *lists,
                tables.setdefault(index, TensorBlocks()),
                lr=group["lr"],
                beta1=beta1,
                beta2=beta2,
                eps=group["eps"],
                weight_decay=group["weight_decay"],
                decoupled=group.get("decoupled_weight_decay", isinstance(self, torch.optim.AdamW)),
                grad_scale=grad_scale,
                copies=copies,
            )
            if copies is not None:
                self._model_weights_written.update(id(p) for p in lists[0])
        return None

    def _took_every_copy(self, main_params: list[torch.Tensor]) -> bool:
        """Whether the last step wrote the model weights of all these master weights (and
        forget it: a step or a checkpoint load in between would make it stale)."""
        written = self.__dict__.pop("_model_weights_written", set())
        return all(id(p) in written for p in main_params)

    def _scale_grads(self, scale: float) -> None:
        """Multiply the gradients by `scale` in place, as clipping does (in fp32: foreach ops
        on CPU would round a Python scalar to the gradients' dtype first)."""
        by_device: dict[torch.device, list[torch.Tensor]] = {}
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    by_device.setdefault(p.grad.device, []).append(p.grad)
        for device, grads in by_device.items():
            torch._foreach_mul_(grads, torch.tensor(scale, dtype=torch.float32, device=device))

    def _kernel_lists(self, group) -> tuple[list, ...] | None:
        """(params, grads, exp_avgs, exp_avg_sqs, steps) of the group's parameters with a
        gradient, their state made where new; None where the kernel does not take the group."""
        plain = not (group["amsgrad"] or group["maximize"] or group["differentiable"])
        scalars = not any(isinstance(group[k], torch.Tensor) for k in ("lr", "betas", "eps"))
        if not (plain and scalars) or not _kernel_available():
            return None
        lists = ([], [], [], [], [])
        if any(p.grad is not None for p in group["params"]):
            self._init_group(group, lists[0], lists[1], lists[2], lists[3], [], lists[4])
            self._counts_to_devices(lists[0], lists[4])
        from megatron_mamba.kernels import adamw

        return lists if not lists[0] or adamw.supports(*lists) else None

    def _counts_to_devices(self, params: list, steps: list) -> None:
        """Move step counts kept on the host (torch's layout without `fused` or `capturable`)
        to their parameters' GPUs, where the kernel reads them: the fused layout, which torch's
        other steps take as well."""
        for index, (p, count) in enumerate(zip(params, steps, strict=True)):
            if p.is_cuda and not count.is_cuda:
                steps[index] = self.state[p]["step"] = count.to(p.device, torch.float32)


class OneLaunchAdam(_OneLaunchStep, torch.optim.Adam):
    pass


class OneLaunchAdamW(_OneLaunchStep, torch.optim.AdamW):
    pass


@functools.cache
def _kernel_available() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return torch.cuda.is_available()


def use_one_launch_adam(optimizer: torch.optim.Optimizer) -> bool:
    """Switch a torch Adam/AdamW to the one-launch step in place; False (and unchanged) for
    any other optimizer."""
    if type(optimizer) is torch.optim.AdamW:
        optimizer.__class__ = OneLaunchAdamW
    elif type(optimizer) is torch.optim.Adam:
        optimizer.__class__ = OneLaunchAdam
    elif not isinstance(optimizer, _OneLaunchStep):
        return False
    for group in optimizer.param_groups:
        for p in group["params"]:
            _OWNER[p] = weakref.ref(optimizer)
    return True


def defer_grad_scale(params: list[torch.Tensor], scale: float) -> bool:
    """Gradient clipping's multiplication by `scale`, left to the next step of the one-launch
    optimizers that own `params` (inside their update, instead of a pass over the gradients of
    its own). Deferred only where such optimizers own every parameter in `params` and have no
    other with a gradient; False otherwise, and nothing is changed."""
    owners: dict[int, _OneLaunchStep] = {}
    for p in params:
        reference = _OWNER.get(p)
        owner = reference() if reference is not None else None
        if owner is None:
            return False
        owners[id(owner)] = owner
    given = {id(p) for p in params}
    for owner in owners.values():
        for group in owner.param_groups:
            if any(p.grad is not None and id(p) not in given for p in group["params"]):
                return False
    for owner in owners.values():
        owner._pending_grad_scale = owner.__dict__.get("_pending_grad_scale", 1.0) * scale
    return bool(owners)


def write_model_weights_in_step(optimizer) -> bool:
    """Under megatron's fp32 master weights (`Float16OptimizerWithFloat16Params`, not the
    distributed optimizer) with a one-launch inner optimizer: let its step write the updated
    master weights, rounded, into the model's bf16/fp16 weights, and skip megatron's copy after
    the update wherever that step wrote every one of them (megatron copies as before otherwise:
    a group torch stepped, a checkpoint load). False, and nothing changed, for any other
    optimizer."""
    from megatron.core.optimizer.optimizer import Float16OptimizerWithFloat16Params

    inner = getattr(optimizer, "optimizer", None)
    if type(optimizer) is not Float16OptimizerWithFloat16Params:
        return False
    if not isinstance(inner, _OneLaunchStep) or optimizer.config.reuse_grad_buf_for_mxfp8_param_ag:
        return False
    model_weights = WeakIdKeyDictionary()
    for models, mains in zip(
        optimizer.float16_groups, optimizer.fp32_from_float16_groups, strict=True
    ):
        for model, main in zip(models, mains, strict=True):
            model_weights[main] = model  # its .data read at each step, as megatron does
    inner._model_weights = model_weights
    copy_after_update = optimizer._copy_main_params_to_model_params
    mains = [p for group in optimizer.fp32_from_float16_groups for p in group]  # fixed objects

    def copy_unless_written():
        if not inner._took_every_copy(mains):
            copy_after_update()

    optimizer._copy_main_params_to_model_params = copy_unless_written
    return True
