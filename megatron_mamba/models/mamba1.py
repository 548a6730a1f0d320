"""The Mamba1 (selective scan) mixer, tensor- and sequence-parallel, in two layouts.

Classic (transformers' `MambaMixer`, the mixer CALD puts in Pythia): in_proj → [x, z]; causal
conv on x; x_proj(conv(x)) → [dt_low, B, C] with one B and C shared by all channels; dt_proj.
Parameter names are transformers'. Under TP the channels are split, so x_proj's product is a partial
sum on each rank: it is all-reduced forward, and its gradient all-reduced backward.

Grouped (MambaInLlama's `Mamba`): x, z, B, C and dt_low all come from the block input; x and B are
as wide as V and K and are repeated (per d_state-wide group) up to d_inner; every group of d_state
channels has its own B and C. in_proj fuses MambaInLlama's in_proj_x, in_proj_z, B_proj and C_proj
as [x, z, B, C]. dt_proj_down is small and replicated on every TP rank.

Tensors inside are [batch, channels, length], as the kernels want them; the block's are
[sequence, batch, hidden].
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange, repeat
from megatron.core import parallel_state
from megatron.core.tensor_parallel import (
    gather_from_sequence_parallel_region,
    reduce_from_tensor_model_parallel_region,
    reduce_scatter_to_sequence_parallel_region,
)
from megatron.core.transformer.transformer_config import TransformerConfig

from megatron_mamba import kernels
from megatron_mamba.config import MambaConfig
from megatron_mamba.models.mamba_common import (
    MambaMixerBase,
    dt_bias_fill,
    init_whole,
    kaiming_uniform,
    sum_grad_over_tp,
    sum_over_tp_both_ways,
    tensor_parallel,
    uniform,
)
from megatron_mamba.models.mamba_dims import Mamba1Dims
from megatron_mamba.models.mamba_math import (
    MambaState,
    local_segments,
    selective_scan_after_conv,
    stateful_conv,
)


class Mamba1Mixer(MambaMixerBase):
    kind = "mamba1"

    def __init__(
        self,
        config: TransformerConfig,
        dims: Mamba1Dims,
        mamba: MambaConfig,
        layer_number: int | None = None,
        **_unused,
    ):
        super().__init__(config, dims, layer_number)
        d_local = self.d_local = dims.d_inner // self.tp
        factory = self.factory
        if dims.grouped:
            self.dt_proj_down = torch.nn.Linear(dims.d_model, dims.dt_rank, bias=False, **factory)
            # Each rank sees only its sequence shard under SP: grads are summed like a norm's.
            self.dt_proj_down.weight.sequence_parallel = config.sequence_parallel
        else:
            x_proj_out = dims.dt_rank + 2 * dims.d_state
            self.x_proj = torch.nn.Linear(d_local, x_proj_out, bias=False, **factory)
            tensor_parallel(self.x_proj.weight, 1)
        self.dt_proj = torch.nn.Linear(dims.dt_rank, d_local, bias=True, **factory)
        self.A_log = torch.nn.Parameter(torch.empty(d_local, dims.d_state, **factory))
        self.D = torch.nn.Parameter(torch.empty(d_local, **factory))
        for param in (*self.dt_proj.parameters(), self.A_log, self.D):
            tensor_parallel(param, 0)
        self._build_out_proj()
        with self._layer_generator():
            self._init_fresh(mamba)

    @torch.no_grad()
    def _init_fresh(self, mamba: MambaConfig) -> None:
        """mamba_ssm's initialisation, drawn whole and sliced (independent of the TP size)."""
        self._init_projections_and_conv()
        init_whole(self.dt_proj.weight, uniform(self.dims.dt_rank**-0.5 * mamba.dt_scale))
        init_whole(self.dt_proj.bias, dt_bias_fill(mamba.dt_min, mamba.dt_max, mamba.dt_init_floor))
        if self.dims.grouped:
            init_whole(self.dt_proj_down.weight, kaiming_uniform)
        else:
            init_whole(self.x_proj.weight, kaiming_uniform)
        s4d = torch.arange(1, self.dims.d_state + 1, dtype=torch.float32)
        self.A_log.copy_(torch.log(s4d).expand(self.d_local, -1))
        self.D.fill_(1.0)

    def empty_state(self, batch: int) -> MambaState:
        """The state before the first token."""
        weight = self.conv1d.weight
        conv = weight.new_zeros(batch, self.d_local, self.dims.d_conv)
        ssm = weight.new_zeros(batch, self.d_local, self.dims.d_state, dtype=torch.float32)
        return MambaState(conv, ssm)

    def forward_stateful(
        self, hidden_states: torch.Tensor, state: MambaState | None, return_state: bool = True
    ) -> tuple[tuple[torch.Tensor, torch.Tensor | None], MambaState | None]:
        """Mix `hidden_states` [s, b, h] continuing from `state` (None: from the start); returns
        (output, output bias) and the state after the last token (decode one token at a time)."""
        if state is None and not return_state:
            whole = self._one_function(hidden_states)
            if whole is not None:
                return whole, None
        proj, _ = self.in_proj(hidden_states)
        if self.dims.grouped:
            x, z, dt_low, B, C = self._grouped_inputs(hidden_states, proj)
        else:
            # One copy into [b, 2d, l]: x, z and the conv then run on rows contiguous in l.
            x, z = rearrange(proj, "s b d -> b d s").contiguous().chunk(2, dim=1)
        x, conv_last = stateful_conv(
            x, self.conv1d.weight[:, 0], self.conv1d.bias, state.conv if state else None
        )
        if not self.dims.grouped:
            dt_low, B, C = self._classic_selection(x)
        y, ssm_last = selective_scan_after_conv(
            self, x, z, dt_low, B, C, state.ssm if state else None, return_state
        )
        out = self.out_proj(rearrange(y, "b d l -> l b d"))
        return out, (MambaState(conv_last, ssm_last) if return_state else None)

    def wants_batch_first(self, hidden_states: torch.Tensor) -> bool:
        """Whether the mixer would rather have `hidden_states` [s, b, h] stored batch-first:
        the one-function mixer at TP=1 reads it so (a copy otherwise, ~45 µs a layer at
        Pythia-1b's shape)."""
        return self.tp == 1 and kernels.mamba1_mixer(hidden_states) is not None

    def _one_function(self, hidden_states: torch.Tensor):
        """(output, out_proj bias or None) of the mixer from in_proj to out_proj as one function
        without d_inner-wide layout copies (kernels/mamba1_fused.py), where it applies:
        on GPU, in training or prefill without a state. Both layouts at TP=1 by default; under
        TP (the input gathered or copied to every rank, the partial outputs reduced, as
        megatron's linears do) only with the pending kernels on, until their NCCL tests run on
        two GPUs. None elsewhere."""
        if self.tp > 1 and not kernels.pending_kernels():
            return None
        kernel = kernels.mamba1_mixer(hidden_states)
        if kernel is None:
            return None
        if self.tp == 1:
            out = kernel(rearrange(hidden_states, "s b h -> b s h"), self)
            out = rearrange(out, "b s h -> s b h")
            return out, None  # batch-first storage: the block's residual sum reads it in place
        sp = self.config.sequence_parallel
        if sp:
            whole = gather_from_sequence_parallel_region(hidden_states)
        else:
            whole = sum_grad_over_tp(hidden_states)
        whole = rearrange(whole, "s b h -> b s h").contiguous()
        group = parallel_state.get_tensor_model_parallel_group()
        partial = kernel(whole, self, group, sp)
        partial = rearrange(partial, "b s h -> s b h").contiguous()
        if sp:
            return reduce_scatter_to_sequence_parallel_region(partial), self.out_proj.bias
        return reduce_from_tensor_model_parallel_region(partial), self.out_proj.bias

    def _classic_selection(self, x_bdl: torch.Tensor):
        """dt_low [b, l, r], B and C [b, n, l] from the conv output through x_proj."""
        x_dbl = sum_over_tp_both_ways(
            F.linear(rearrange(x_bdl, "b d l -> b l d"), self.x_proj.weight)
        )
        n = self.dims.d_state
        dt_low, B, C = x_dbl.split([self.dims.dt_rank, n, n], dim=-1)
        B = rearrange(B, "b l n -> b n l").contiguous()
        return dt_low, B, rearrange(C, "b l n -> b n l").contiguous()

    def _grouped_inputs(self, hidden_states: torch.Tensor, proj: torch.Tensor):
        """x, z [b, d, l]; dt_low [b, l, r]; B, C [b, groups, n, l] from the block input."""
        n, r = self.dims.d_state, self.dims.repeat
        x, z, B, C = rearrange(proj, "s b d -> b s d").split(
            local_segments(self.dims.in_proj_segments, self.tp), dim=-1
        )
        x = repeat(x, "b l (g n) -> b (g r n) l", n=n, r=r)
        B = repeat(B, "b l (g n) -> b (g r) n l", n=n, r=r)
        C = rearrange(C, "b l (g n) -> b g n l", n=n)
        dt_low = self.dt_proj_down(hidden_states)
        if self.config.sequence_parallel:
            dt_low = gather_from_sequence_parallel_region(dt_low, tensor_parallel_output_grad=True)
        if not self.config.sequence_parallel:
            dt_low = sum_grad_over_tp(dt_low)
        return x, rearrange(z, "b l d -> b d l"), rearrange(dt_low, "s b r -> b s r"), B, C
