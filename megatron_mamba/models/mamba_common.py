"""Pieces both megatron Mamba mixers share: their base class (projections, conv, forward),
tensor-parallel parameter helpers and mamba_ssm's fresh initialisation (S4D-real A, log-uniform
dt). The computation between the projections is in mamba_math.py."""

from __future__ import annotations

import math
from collections.abc import Callable
from contextlib import contextmanager

import torch
from megatron.core import parallel_state
from megatron.core.tensor_parallel.layers import set_tensor_model_parallel_attributes
from megatron.core.transformer.module import MegatronModule
from megatron.core.transformer.transformer_config import TransformerConfig

from megatron_mamba.models.linear import ColumnLinear, RowLinear
from megatron_mamba.parallel.shards import mark_segments, partition_of, tp_slice


def tensor_parallel(
    param: torch.Tensor, dim: int, segments: tuple[int, ...] | None = None
) -> torch.Tensor:
    """Mark a rank-local parameter as split along `dim` (optionally as separately split blocks);
    megatron's parallel linears mark their own, which is kept."""
    if not hasattr(param, "tensor_model_parallel"):
        set_tensor_model_parallel_attributes(param, True, dim, 1)
    if segments is not None:
        mark_segments(param, segments)
    return param


_LAYER_SEED_STRIDE = 1_000_003
"""Layer k's mixer draws from the run's seed + k × this: runs whose seeds differ by less than it
never share a layer's fresh values."""


def param_device(config) -> torch.device:
    if torch.get_default_device().type == "meta":  # a model built only for its shapes
        return torch.device("meta")
    if config.use_cpu_initialization or not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda", torch.cuda.current_device())


@torch.no_grad()
def init_whole(param: torch.Tensor, fill: Callable[[torch.Tensor], None]) -> None:
    """Fill the whole (unsplit) tensor on the CPU from the default generator, which every rank
    seeds alike, then keep this rank's piece: the mixer's own values do not depend on the TP
    size (megatron's linear layers draw per TP rank, so whole models still differ).
    A meta-device parameter (a model built only for its shapes) is left as it is."""
    if param.is_meta:
        return
    part = partition_of(param)
    shape = list(param.shape)
    tp = parallel_state.get_tensor_model_parallel_world_size()
    if part.dim is not None:
        shape[part.dim] = sum(part.segments) if part.segments else shape[part.dim] * tp
    whole = torch.empty(shape, dtype=torch.float32)
    fill(whole)
    rank = parallel_state.get_tensor_model_parallel_rank()
    param.copy_(tp_slice(whole, part, rank, tp))


def uniform(bound: float) -> Callable[[torch.Tensor], None]:
    return lambda t: t.uniform_(-bound, bound)


def kaiming_uniform(t: torch.Tensor) -> None:
    """nn.Linear's default initialisation (fan-in from the whole tensor)."""
    torch.nn.init.kaiming_uniform_(t, a=math.sqrt(5))


def dt_bias_fill(dt_min: float, dt_max: float, floor: float) -> Callable[[torch.Tensor], None]:
    """softplus(bias) log-uniform in [dt_min, dt_max], as mamba_ssm (through inverse softplus)."""

    def fill(bias: torch.Tensor) -> None:
        u = torch.rand(bias.shape, dtype=torch.float32)
        log_range = math.log(dt_max) - math.log(dt_min)
        dt = torch.exp(u * log_range + math.log(dt_min)).clamp(min=floor)
        bias.copy_(dt + torch.log(-torch.expm1(-dt)))

    return fill


def conv_bound(width: int) -> float:
    """nn.Conv1d's default bound (depthwise: fan-in = kernel width)."""
    return 1.0 / math.sqrt(width)


def _tp_sum(t: torch.Tensor) -> torch.Tensor:
    t = t.contiguous()
    torch.distributed.all_reduce(t, group=parallel_state.get_tensor_model_parallel_group())
    return t


class _SumGradOverTP(torch.autograd.Function):
    """Identity forward; gradients summed over the TP group backward. Unlike megatron's
    copy-to-region it sums permuted (non-contiguous) gradients too."""

    @staticmethod
    def forward(ctx, x):
        return x

    @staticmethod
    def backward(ctx, grad):
        return _tp_sum(grad)


class _SumOverTPBothWays(torch.autograd.Function):
    """Partial sums all-reduced forward, and their gradients all-reduced backward: for a product
    split over ranks whose result every rank then uses for its own channels (x_proj)."""

    @staticmethod
    def forward(ctx, x):
        return _tp_sum(x)

    @staticmethod
    def backward(ctx, grad):
        return _tp_sum(grad)


def sum_grad_over_tp(x: torch.Tensor) -> torch.Tensor:
    if parallel_state.get_tensor_model_parallel_world_size() == 1:
        return x
    return _SumGradOverTP.apply(x)


def sum_over_tp_both_ways(x: torch.Tensor) -> torch.Tensor:
    if parallel_state.get_tensor_model_parallel_world_size() == 1:
        return x
    return _SumOverTPBothWays.apply(x)


class MambaMixerBase(MegatronModule):
    """The fused column-parallel in_proj and the depthwise conv (both split by blocks over TP
    ranks), the row-parallel out_proj, and `forward` as `forward_stateful` from no state.
    Subclasses build their SSM parameters, then call `_build_out_proj()`."""

    kind = "mamba"

    def __init__(self, config: TransformerConfig, dims, layer_number: int | None):
        super().__init__(config=config)
        self.tp = config.tensor_model_parallel_size
        dims.check_tensor_parallel(self.tp)
        self.dims, self.layer_number = dims, layer_number
        self.factory = {"dtype": config.params_dtype, "device": param_device(config)}
        self.in_proj = ColumnLinear(
            dims.d_model,
            sum(dims.in_proj_segments),
            config=config,
            init_method=config.init_method,
            bias=dims.bias,
            gather_output=False,
        )
        for param in self.in_proj.parameters():
            tensor_parallel(param, 0, dims.in_proj_segments)
        channels = sum(dims.conv_segments) // self.tp
        self.conv1d = torch.nn.Conv1d(
            channels, channels, dims.d_conv, groups=channels, bias=dims.conv_bias, **self.factory
        )
        for param in self.conv1d.parameters():
            tensor_parallel(param, 0, dims.conv_segments)

    @torch.no_grad()
    def _init_projections_and_conv(self) -> None:
        """in_proj and out_proj by the model's init methods, the conv as nn.Conv1d; drawn whole,
        sliced (megatron's linears would draw per TP rank)."""
        init_whole(self.in_proj.weight, self.config.init_method)
        init_whole(self.out_proj.weight, self.config.output_layer_init_method)
        bound = conv_bound(self.dims.d_conv)
        init_whole(self.conv1d.weight, uniform(bound))
        if self.conv1d.bias is not None:
            init_whole(self.conv1d.bias, uniform(bound))

    @contextmanager
    def _layer_generator(self):
        """The default generator seeded from the run's seed and this layer's number while the
        mixer draws its fresh values, then restored: a layer's values then depend neither on
        the pipeline stage it is built on (a stage builds only its own layers) nor on what was
        drawn before it, so every TP/PP layout starts from the same fresh mixers. Mixers built
        alone (no layer number) draw from the generator as it is."""
        if self.layer_number is None:
            yield
            return
        state = torch.default_generator.get_state()
        seed = (torch.initial_seed() + _LAYER_SEED_STRIDE * self.layer_number) % 2**63
        torch.default_generator.manual_seed(seed)
        try:
            yield
        finally:
            torch.default_generator.set_state(state)

    def _build_out_proj(self) -> None:
        self.out_proj = RowLinear(
            self.dims.d_inner,
            self.dims.d_model,
            config=self.config,
            init_method=self.config.output_layer_init_method,
            bias=self.dims.bias,
            input_is_parallel=True,
            skip_bias_add=True,
        )

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask=None,
        rotary_pos_emb=None,
        inference_context=None,
        packed_seq_params=None,
        **_unused,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        if packed_seq_params is not None:
            raise ValueError(f"{self.kind} does not support packed sequences (packed_seq_params)")
        out, _ = self.forward_stateful(hidden_states, None, return_state=False)
        return out

    def forward_stateful(self, hidden_states, state, return_state: bool = True):
        raise NotImplementedError
