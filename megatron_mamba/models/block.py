"""The block: norm → mixer, norm → MLP, with GPTNeoX's parallel or the sequential residual.

The mixer (attention, Mamba1, Mamba2) is a submodule chosen per layer by the layer pattern; the
block's norms and MLP stay whatever the mixer. It follows megatron's layer protocol (built by
`TransformerBlock`, returns `(hidden_states, context)`) so megatron handles pipeline stages,
recomputation and the final norm.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from megatron.core.transformer.module import MegatronModule
from megatron.core.transformer.spec_utils import ModuleSpec, build_module
from megatron.core.transformer.transformer_config import TransformerConfig
from megatron.core.transformer.transformer_layer import (
    BaseTransformerLayer,
    get_transformer_layer_offset,
)

from megatron_mamba.models.fused import residual_sum
from megatron_mamba.models.norms import norms_of_one_input


@dataclass
class MixerBlockSubmodules:
    input_layernorm: ModuleSpec | type
    mixer: ModuleSpec | type
    pre_mlp_layernorm: ModuleSpec | type
    mlp: ModuleSpec | type


class MixerBlock(MegatronModule, BaseTransformerLayer):
    """One layer: `x + mixer(ln1(x)) + mlp(ln2(x))` (parallel) or the sequential form."""

    def __init__(
        self,
        config: TransformerConfig,
        submodules: MixerBlockSubmodules,
        layer_number: int = 1,
        parallel_residual: bool = False,
        **_unused,
    ):
        super().__init__(config=config)
        # TransformerBlock passes the stage-local number; the global one names weights and RNGs.
        self.layer_number = layer_number + get_transformer_layer_offset(config)
        self.parallel_residual = parallel_residual
        eps = config.layernorm_epsilon
        self.input_layernorm = build_module(
            submodules.input_layernorm, config=config, hidden_size=config.hidden_size, eps=eps
        )
        self.mixer = build_module(submodules.mixer, config=config, layer_number=self.layer_number)
        self.pre_mlp_layernorm = build_module(
            submodules.pre_mlp_layernorm, config=config, hidden_size=config.hidden_size, eps=eps
        )
        self.mlp = build_module(submodules.mlp, config=config)

    def _add_to_residual(
        self, residual: torch.Tensor, *outputs: tuple[torch.Tensor, torch.Tensor | None]
    ) -> torch.Tensor:
        """`residual` plus each output with its bias (where present), dropout applied to each
        where configured. Without dropout the biases are added together first: one kernel on
        GPU, and one sum over tokens for their gradient however many there are."""
        if self.config.hidden_dropout > 0 and self.training:
            parts = tuple(
                F.dropout(value if bias is None else value + bias, p=self.config.hidden_dropout)
                for value, bias in outputs
            )
            return residual_sum(residual, parts)
        biases = [bias for _, bias in outputs if bias is not None]
        bias = sum(biases[1:], biases[0]) if biases else None
        return residual_sum(residual, tuple(value for value, _ in outputs), bias)

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        rotary_pos_emb: torch.Tensor | None = None,
        inference_context=None,
        packed_seq_params=None,
        **_unused,
    ) -> tuple[torch.Tensor, None]:
        # The mixers are causal over whole rows (right padding needs no mask), decode by their
        # own state (forward_stateful), not megatron's cache, and take no packed documents
        # (megatron's attention would only assert on its fused-QKV RoPE path).
        for given, value in (
            ("attention_mask", attention_mask),
            ("inference_context", inference_context),
            ("packed_seq_params", packed_seq_params),
        ):
            if value is not None:
                raise ValueError(
                    f"{given} is not supported by MixerBlock: it runs causal mixers over "
                    "whole sequences; pass None (pad on the right) and decode with "
                    "forward_stateful"
                )
        if self.parallel_residual:  # both norms read the block's input: one pass where fused
            # a mixer that reads its input batch-first may have it written so
            wants_batch_first = getattr(self.mixer, "wants_batch_first", None)
            mixer_in, mlp_in = norms_of_one_input(
                hidden_states,
                self.input_layernorm,
                self.pre_mlp_layernorm,
                first_batch_first=bool(wants_batch_first and wants_batch_first(hidden_states)),
            )
        else:
            mixer_in = self.input_layernorm(hidden_states)
        mixed = self.mixer(
            mixer_in,
            attention_mask=attention_mask,
            rotary_pos_emb=rotary_pos_emb,
            inference_context=inference_context,
            packed_seq_params=packed_seq_params,
        )
        if self.parallel_residual:
            return self._add_to_residual(hidden_states, mixed, self.mlp(mlp_in)), None
        hidden_states = self._add_to_residual(hidden_states, mixed)
        mlp_out = self.mlp(self.pre_mlp_layernorm(hidden_states))
        return self._add_to_residual(hidden_states, mlp_out), None
