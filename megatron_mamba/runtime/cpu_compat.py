"""The CPU compatibility layer for megatron-core 0.16.1.

megatron-core assumes CUDA in a handful of places (see ../shared/notes/megatron-core-on-cpu.md).
Each patch below replaces exactly one such assumption, is applied only when CUDA is absent, and
has a test in tests/unit/test_cpu_compat.py that fails without it. On a GPU machine nothing here
runs, so the same training code is exercised unchanged there.
"""

from __future__ import annotations

import contextlib
import types
from collections.abc import Callable, Iterator

import torch

_APPLIED: list[str] = []


class CpuRNGStatesTracker:
    """megatron's RNG tracker (named states, `fork` to draw from one) over the CPU generator.

    megatron keeps one CUDA generator state per parallel role (data-parallel, tensor-parallel,
    expert) so that, e.g., dropout inside a tensor-parallel region differs across TP ranks. On CPU
    the same bookkeeping works with the CPU generator's state tensors.
    """

    def __init__(self, use_cudagraphable_rng: bool = False, is_inference_rng_tracker: bool = False):
        self.is_inference_rng_tracker = is_inference_rng_tracker
        self.reset()

    def is_initialized(self) -> bool:
        return self._is_initialized

    def reset(self) -> None:
        self._is_initialized = False
        self.states_: dict[str, torch.Tensor] = {}
        self.seeds_: set[int] = set()

    def get_states(self) -> dict[str, torch.Tensor]:
        return dict(self.states_)

    def set_states(self, states: dict[str, torch.Tensor]) -> None:
        self._is_initialized = True
        self.states_ = states

    def add(self, name: str, seed: int) -> None:
        self._is_initialized = True
        if seed in self.seeds_:
            raise ValueError(f"RNG seed {seed} is already tracked; each state needs its own seed.")
        if name in self.states_:
            raise ValueError(f"RNG state {name!r} is already tracked.")
        self.seeds_.add(seed)
        generator = torch.Generator(device="cpu")
        generator.manual_seed(seed)
        self.states_[name] = generator.get_state()

    @contextlib.contextmanager
    def fork(self, name: str = "model-parallel-rng") -> Iterator[None]:
        if name not in self.states_:
            raise KeyError(f"RNG state {name!r} was never added to the tracker.")
        outside = torch.get_rng_state()
        torch.set_rng_state(self.states_[name])
        try:
            yield
        finally:
            self.states_[name] = torch.get_rng_state()
            torch.set_rng_state(outside)


def _cpu_current_device() -> torch.device:
    """Stands in for torch.cuda.current_device(), which raises when there is no CUDA."""
    return torch.device("cpu")


class _CudaLiteralsToCpu(types.ModuleType):
    """A view of the torch module in which tensor factories map device="cuda" to the CPU.

    Installed as the `torch` global of the megatron modules that hard-code device="cuda"
    (pipeline schedules, optimizer wrappers, gradient clipping), so nothing else is affected.
    """

    _FACTORIES = ("zeros", "ones", "empty", "tensor", "full")

    def __init__(self, real_torch: types.ModuleType):
        super().__init__("torch")
        self._real = real_torch

    def __getattr__(self, name: str):
        attr = getattr(self._real, name)
        if name in self._FACTORIES:
            return _on_cpu(attr)
        if name == "cuda":
            return _CUDA_WITHOUT_SYNC
        return attr


class _CudaWithoutSync(types.ModuleType):
    """`torch.cuda` in which `synchronize()` does nothing: with no device there is nothing to
    wait for (megatron's checkpoint writer synchronises after copying tensors to the CPU)."""

    def __init__(self):
        super().__init__("torch.cuda")

    def __getattr__(self, name: str):
        return getattr(torch.cuda, name)

    @staticmethod
    def synchronize(device=None) -> None:
        return None


_CUDA_WITHOUT_SYNC = _CudaWithoutSync()


def _on_cpu(factory: Callable) -> Callable:
    def wrapped(*args, **kwargs):
        device = kwargs.get("device")
        if device is not None and torch.device(device).type == "cuda":
            kwargs["device"] = "cpu"
        return factory(*args, **kwargs)

    return wrapped


def _patch_rng_tracker() -> None:
    from megatron.core.tensor_parallel import random as mpu_random

    mpu_random.CudaRNGStatesTracker = CpuRNGStatesTracker


def _patch_current_device() -> None:
    torch.cuda.current_device = _cpu_current_device


def _patch_schedule_literals() -> None:
    from megatron.core.pipeline_parallel import schedules

    if not isinstance(schedules.torch, _CudaLiteralsToCpu):
        schedules.torch = _CudaLiteralsToCpu(torch)


def _patch_optimizer_literals() -> None:
    """megatron's optimizer wrappers, gradient clipping and its fallback multi-tensor L2 norm keep
    their scale, found-inf flag and norm in device="cuda" tensors; make those CPU tensors, in
    those modules only."""
    from megatron.core import utils
    from megatron.core.optimizer import clip_grads, optimizer

    for module in (optimizer, clip_grads, utils):
        if not isinstance(module.torch, _CudaLiteralsToCpu):
            module.torch = _CudaLiteralsToCpu(torch)
    optimizer.clip_grad_by_total_norm_fp32 = clip_grads_by_total_norm


def clip_grads_by_total_norm(parameters, max_norm, total_norm, use_decoupled_grad=False):
    """megatron's gradient clipping minus its assertion that gradients are fp32 CUDA tensors
    (CPU runs, and bf16 gradients without fp32 master weights). The coefficient multiplies in
    fp32: foreach ops on CPU round a Python scalar to the gradients' dtype first."""
    if isinstance(parameters, torch.Tensor):
        parameters = [parameters]
    attribute = "decoupled_grad" if use_decoupled_grad else "grad"
    grads = [getattr(p, attribute, None) for p in parameters]
    grads = [g.detach() for g in grads if g is not None]
    clip_coeff = max_norm / (total_norm + 1.0e-6)
    if clip_coeff < 1.0 and grads:
        coefficient = torch.tensor(clip_coeff, dtype=torch.float32, device=grads[0].device)
        torch._foreach_mul_(grads, coefficient)


def _patch_tied_embedding_copy() -> None:
    """With tied embeddings and PP > 1, megatron moves the last stage's copy of the embedding to
    CUDA (`weight.data.cuda()`) before all-reducing it from the first stage; keep it on the CPU."""
    from megatron.core.models.common.language_module.language_module import LanguageModule

    original = LanguageModule.setup_embeddings_and_output_layer
    if getattr(original, "_cpu_compat", False):
        return

    def setup_on_cpu(self, *args, **kwargs):
        real_cuda = torch.Tensor.cuda
        torch.Tensor.cuda = lambda tensor, *a, **k: tensor
        try:
            return original(self, *args, **kwargs)
        finally:
            torch.Tensor.cuda = real_cuda

    setup_on_cpu._cpu_compat = True
    LanguageModule.setup_embeddings_and_output_layer = setup_on_cpu


def _patch_checkpoint_rng_states() -> None:
    """Activation recomputation saves and restores the CUDA generator's state; there is none on
    CPU (the CPU state and the tracker's states are saved alongside, and stay)."""
    from megatron.core.tensor_parallel import random as mpu_random

    mpu_random._get_cuda_rng_state = lambda *args, **kwargs: None
    mpu_random._set_cuda_rng_state = lambda *args, **kwargs: None


def _patch_checkpoint_cuda_literals() -> None:
    """megatron's distributed-checkpoint writer calls `torch.cuda.synchronize()` after staging
    tensors and keeps its verification flags in device="cuda" tensors; run both on the CPU."""
    from megatron.core.dist_checkpointing.strategies import filesystem_async, state_dict_saver

    for module in (filesystem_async, state_dict_saver):
        if not isinstance(module.torch, _CudaLiteralsToCpu):
            module.torch = _CudaLiteralsToCpu(torch)


PATCHES: dict[str, Callable[[], None]] = {
    "rng_tracker": _patch_rng_tracker,
    "current_device": _patch_current_device,
    "schedule_cuda_literals": _patch_schedule_literals,
    "optimizer_cuda_literals": _patch_optimizer_literals,
    "tied_embedding_copy": _patch_tied_embedding_copy,
    "checkpoint_rng_states": _patch_checkpoint_rng_states,
    "checkpoint_cuda_literals": _patch_checkpoint_cuda_literals,
}


def apply_cpu_compat(only: list[str] | None = None) -> list[str]:
    """Apply the CPU patches (all, or the named ones) once; a no-op where CUDA is available."""
    if torch.cuda.is_available():
        return []
    for name in only if only is not None else list(PATCHES):
        if name not in PATCHES:
            raise KeyError(f"unknown CPU patch {name!r}; expected one of {sorted(PATCHES)}")
        if name not in _APPLIED:
            PATCHES[name]()
            _APPLIED.append(name)
    return list(_APPLIED)
