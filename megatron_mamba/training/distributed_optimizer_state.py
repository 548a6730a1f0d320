"""Two repairs around loading megatron-core 0.16.1's distributed optimizer with torch's Adam.

megatron expects Apex's or Transformer Engine's Adam, which keep the step count in the parameter
groups; torch's keeps a `step` tensor in each parameter's state, and two places trip over it:

- describing what to load reads that step, and asserts when a fresh optimizer has no state yet.
  Its own remedy (used for its FSDP format) allocates the state with one zero-gradient step;
  the loaded shards (master weights, moments) then replace it.
- loading the shards copies every state tensor of the described state, `step` included, over
  the step it has just restored from the checkpoint: the resumed run's Adam bias correction
  would count from the placeholder's step. The saved step is put back afterwards.
"""

from __future__ import annotations

from megatron.core.optimizer.distrib_optimizer import DistributedOptimizer


def _pairs(optimizer, state=None):
    inners = getattr(optimizer, "chained_optimizers", [optimizer])
    if state is None:
        states = [None] * len(inners)
    elif len(inners) == 1:  # a chain of one describes its optimizer's state unwrapped
        states = [state]
    else:
        states = [state[i] for i in range(len(inners))]
    return [
        (o, s) for o, s in zip(inners, states, strict=True) if isinstance(o, DistributedOptimizer)
    ]


def shards_its_state(optimizer) -> bool:
    """Whether the optimizer is megatron's distributed one (or chains one): its checkpoints keep
    the state as it lies in its buffers, so they load only at the layout they were saved with."""
    return bool(_pairs(optimizer))


def before_describing_the_load(optimizer) -> None:
    for inner, _ in _pairs(optimizer):
        if not inner.optimizer.state:
            inner._init_optimizer_states_with_dummy_values()


def after_loading(optimizer, loaded_state) -> None:
    for inner, state in _pairs(optimizer, loaded_state):
        steps = {group.get("step") for group in state["optimizer"]["param_groups"]}
        if len(steps) != 1 or None in steps:  # Apex's or TE's Adam: nothing was overwritten
            continue
        (step,) = steps
        for param_state in inner.optimizer.state.values():
            if "step" in param_state:
                param_state["step"].fill_(step)
