"""The mixer registry: mixer name → a function giving its megatron `ModuleSpec`.

A layer pattern picks one entry per layer; the model builder never branches on mixer kind.
"""

from __future__ import annotations

from collections.abc import Callable

from megatron.core.transformer.attention import SelfAttention, SelfAttentionSubmodules
from megatron.core.transformer.enums import AttnMaskType
from megatron.core.transformer.identity_op import IdentityOp
from megatron.core.transformer.spec_utils import ModuleSpec

from megatron_mamba.config import ModelConfig
from megatron_mamba.models.attention import SDPAttention
from megatron_mamba.models.linear import ColumnLinear, RowLinear
from megatron_mamba.models.mamba1 import Mamba1Mixer
from megatron_mamba.models.mamba2 import Mamba2Mixer
from megatron_mamba.models.mamba_dims import mamba1_dims, mamba2_dims

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
            linear_qkv=ColumnLinear,
            core_attention=ModuleSpec(
                module=SDPAttention, params={"sliding_window": model.sliding_window}
            ),
            linear_proj=RowLinear,
            q_layernorm=IdentityOp,
            k_layernorm=IdentityOp,
        ),
    )


@register_mixer("mamba1")
def mamba1_spec(model: ModelConfig) -> ModuleSpec:
    """Selective-scan mixer; classic (CALD) or attention-shaped (MambaInLlama) per model.mamba."""
    return ModuleSpec(module=Mamba1Mixer, params={"dims": mamba1_dims(model), "mamba": model.mamba})


@register_mixer("mamba2")
def mamba2_spec(model: ModelConfig) -> ModuleSpec:
    """SSD mixer; classic (mamba_ssm) or attention-shaped (MambaInLlama) per model.mamba."""
    return ModuleSpec(module=Mamba2Mixer, params={"dims": mamba2_dims(model), "mamba": model.mamba})
