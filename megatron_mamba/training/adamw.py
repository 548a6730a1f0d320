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

_OWNER: dict[int, tuple[weakref.ref, weakref.ref]] = {}
"""Each parameter of a one-launch optimizer, by id: weak references to the parameter and to that
optimizer (a plain dict: clipping looks every parameter up each step, after its wait for the
gradient norm, and a WeakIdKeyDictionary lookup costs microseconds)."""


def _owner(param: torch.Tensor) -> _OneLaunchStep | None:
    entry = _OWNER.get(id(param))
    return entry[1]() if entry is not None and entry[0]() is param else None


class _OneLaunchStep:
    @torch.no_grad()
    def step(self, closure=None):
        grad_scale = self.__dict__.pop("_pending_grad_scale", 1.0)
        self._model_weights_written = set()
        plan = None if closure else self._current_plan()
        if plan is None:
            if grad_scale != 1.0:
                self._scale_grads(grad_scale)
            return super().step(closure)
        from megatron_mamba.kernels import adamw

        for group, lists, tables, copies in plan.groups:
            torch._foreach_add_(lists[4], 1)
            beta1, beta2 = group["betas"]
            adamw.adam_step(
                *lists,
                tables,
                lr=group["lr"],
                beta1=beta1,
                beta2=beta2,
                eps=group["eps"],
                weight_decay=group["weight_decay"],
                decoupled=group.get("decoupled_weight_decay", isinstance(self, torch.optim.AdamW)),
                grad_scale=grad_scale,
                copies=copies,
                tables_ready=True,
            )
            if copies is not None:
                self._model_weights_written.update(id(p) for p in lists[0])
        return None

    def plan_step(self) -> None:
        """Gather the next step's lists and tables now, once the gradients are in place:
        megatron's `prepare_grads` calls this (`plan_before_clipping`), so that the host work
        runs while the GPU is still busy, not after clipping has waited for the gradient norm
        (about 3 ms of an idle GPU a step on a 1B model, benchmarks/RESULTS.md)."""
        self._planned_step = self._plan()

    def load_state_dict(self, state_dict):
        self.__dict__.pop("_planned_step", None)  # planned with the state being replaced
        super().load_state_dict(state_dict)

    def _current_plan(self) -> _StepPlan | None:
        """The plan made before clipping where it still holds, else one made now."""
        plan = self.__dict__.pop("_planned_step", None)
        return plan if plan is not None and plan.holds(self) else self._plan()

    def _plan(self) -> _StepPlan | None:
        """The step's launches; None where the kernel does not take some group."""
        groups = [self._kernel_lists(group) for group in self.param_groups]
        if any(lists is None for lists in groups):
            return None
        from megatron_mamba.kernels import adamw

        tables = self.__dict__.setdefault("_one_launch_tables", {})
        model_weights = self.__dict__.get("_model_weights")
        planned = []
        for index, (group, lists) in enumerate(zip(self.param_groups, groups, strict=True)):
            if not lists[0]:
                continue
            copies = None
            if model_weights is not None:
                models = [model_weights.get(p) for p in lists[0]]
                copies = None if any(m is None for m in models) else [m.data for m in models]
                if copies is not None and not adamw.takes_copies(lists[0], copies):
                    copies = None
            blocks = tables.setdefault(index, TensorBlocks())
            adamw.block_tables(lists, blocks, copies)
            planned.append((group, lists, blocks, copies))
        return _StepPlan(planned, [p.grad for group in self.param_groups for p in group["params"]])

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


class _StepPlan:
    """One step's launches, each (group, kernel lists, block tables, model-weight copies or
    None), and every parameter's gradient when planned: the plan holds while each parameter
    still has that gradient (the same tensor, or still none)."""

    def __init__(self, groups: list[tuple], grads: list[torch.Tensor | None]):
        self.groups, self.grads = groups, grads

    def holds(self, optimizer: torch.optim.Optimizer) -> bool:
        params = [p for group in optimizer.param_groups for p in group["params"]]
        return len(params) == len(self.grads) and all(
            p.grad is grad for p, grad in zip(params, self.grads, strict=True)
        )


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
    for key in [key for key, (param, _) in _OWNER.items() if param() is None]:
        del _OWNER[key]
    for group in optimizer.param_groups:
        for p in group["params"]:
            _OWNER[id(p)] = (weakref.ref(p), weakref.ref(optimizer))
    return True


def defer_grad_scale(params: list[torch.Tensor], scale: float) -> bool:
    """Gradient clipping's multiplication by `scale`, left to the next step of the one-launch
    optimizers that own `params` (inside their update, instead of a pass over the gradients of
    its own). Deferred only where such optimizers own every parameter in `params` and have no
    other with a gradient; False otherwise, and nothing is changed."""
    owners: dict[int, _OneLaunchStep] = {}
    for p in params:
        owner = _owner(p)
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


def plan_before_clipping(optimizer) -> bool:
    """Where megatron's optimizer (or a part of a chained one) wraps a one-launch optimizer,
    have its `prepare_grads` (which puts the gradients in place, before clipping waits on the
    GPU for their norm) also plan the inner step (`_OneLaunchStep.plan_step`). False, and
    nothing changed, for any other optimizer."""
    inner = getattr(optimizer, "optimizer", None)
    if not isinstance(inner, _OneLaunchStep) or "prepare_grads" in vars(optimizer):
        return False
    prepare_grads = optimizer.prepare_grads

    def prepare_grads_and_plan() -> bool:
        found_inf = prepare_grads()
        inner.plan_step()
        return found_inf

    optimizer.prepare_grads = prepare_grads_and_plan
    return True
