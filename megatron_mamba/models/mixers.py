"""The mixer registry: mixer name → a function giving its megatron `ModuleSpec`.

A layer pattern picks one entry per layer. New mixers (mamba1, mamba2) register here; the model
builder never branches on mixer kind.
"""

from __future__ import annotations

from collections.abc import Callable

from megatron.core.tensor_parallel import ColumnParallelLinear, RowParallelLinear
from megatron.core.transformer.attention import SelfAttention, SelfAttentionSubmodules
from megatron.core.transformer.enums import AttnMaskType
from megatron.core.transformer.identity_op import IdentityOp
from megatron.core.transformer.spec_utils import ModuleSpec

from megatron_mamba.config import ModelConfig
from megatron_mamba.models.attention import SDPAttention

MixerSpecFactory = Callable[[ModelConfig], ModuleSpec]
MIXERS: dict[str, MixerSpecFactory] = {}


def register_mixer(name: str) -> Callable[[MixerSpecFactory], MixerSpecFactory]:
    def decorate(factory: MixerSpecFactory) -> MixerSpecFactory:
        MIXERS[name] = factory
        return factory

    return decorate


def mixer_spec(name: str, model: ModelConfig) -> ModuleSpec:
    if name not in MIXERS:
        raise KeyError(f"mixer {name!r} is not registered; available: {sorted(MIXERS)}")
    return MIXERS[name](model)


@register_mixer("attention")
def attention_spec(model: ModelConfig) -> ModuleSpec:
    """megatron's SelfAttention (fused QKV, row-parallel output) with the SDPA core."""
    return ModuleSpec(
        module=SelfAttention,
        params={"attn_mask_type": AttnMaskType.causal},
        submodules=SelfAttentionSubmodules(
            linear_qkv=ColumnParallelLinear,
            core_attention=ModuleSpec(
                module=SDPAttention, params={"sliding_window": model.sliding_window}
            ),
            linear_proj=RowParallelLinear,
            q_layernorm=IdentityOp,
            k_layernorm=IdentityOp,
        ),
    )
