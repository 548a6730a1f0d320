"""transformers models of hybrids: transformers' own GPTNeoX / Llama / Mistral with the layer
pattern's Mamba layers swapped in (block norms and MLP kept, as in training).

Attention layers are transformers' own, so a hybrid export differs from the plain architecture only
where Mamba is. Weight names follow CALD (GPTNeoX: `gpt_neox.layers.{i}.attention.mamba.*`) and
MambaInLlama (Llama/Mistral: `model.layers.{i}.mamba.*`). Generation uses transformers' cache:
key/value for attention layers, conv and SSM state for Mamba layers.
"""

from __future__ import annotations

import functools
import inspect

import torch
from torch import nn
from transformers import (
    GPTNeoXForCausalLM,
    GPTNeoXModel,
    LlamaForCausalLM,
    LlamaModel,
    MistralForCausalLM,
    MistralModel,
)
from transformers.cache_utils import DynamicCache
from transformers.models.gpt_neox.modeling_gpt_neox import GPTNeoXMLP, GPTNeoXPreTrainedModel
from transformers.models.llama.modeling_llama import LlamaMLP, LlamaPreTrainedModel, LlamaRMSNorm
from transformers.models.mistral.modeling_mistral import (
    MistralMLP,
    MistralPreTrainedModel,
    MistralRMSNorm,
)

from megatron_mamba.convert.hf_config import model_config_from_hf
from megatron_mamba.hf.cache import HybridCache
from megatron_mamba.hf.configuration import (
    GPTNeoXHybridConfig,
    LlamaHybridConfig,
    MistralHybridConfig,
)
from megatron_mamba.hf.mixers import build_mixer


class GPTNeoXMambaLayer(nn.Module):
    """CALD's GPTNeoXMambaLayer: GPTNeoX's norms, MLP and residual form around a Mamba mixer
    (held as attention.mamba)."""

    def __init__(self, config: GPTNeoXHybridConfig, mixer: nn.Module):
        super().__init__()
        self.use_parallel_residual = config.use_parallel_residual
        self.input_layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.post_attention_layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.attention = nn.Module()
        self.attention.mamba = mixer
        self.mlp = GPTNeoXMLP(config)

    def forward(
        self, hidden_states: torch.Tensor, layer_past=None, mamba_padding_mask=None, **_
    ) -> torch.Tensor:
        mixed = self.attention.mamba(
            self.input_layernorm(hidden_states),
            cache_params=layer_past,
            attention_mask=mamba_padding_mask,
        )
        if self.use_parallel_residual:
            return hidden_states + mixed + self.mlp(self.post_attention_layernorm(hidden_states))
        mixed = mixed + hidden_states
        return mixed + self.mlp(self.post_attention_layernorm(mixed))


class LlamaMambaLayer(nn.Module):
    """MambaInLlama's MambaDecoderLayer: Llama's RMSNorms and SwiGLU MLP around a Mamba mixer."""

    norm_class, mlp_class = LlamaRMSNorm, LlamaMLP

    def __init__(self, config: LlamaHybridConfig, mixer: nn.Module):
        super().__init__()
        self.input_layernorm = self.norm_class(config.hidden_size, eps=config.rms_norm_eps)
        self.post_attention_layernorm = self.norm_class(config.hidden_size, eps=config.rms_norm_eps)
        self.mamba = mixer
        self.mlp = self.mlp_class(config)

    def forward(
        self,
        hidden_states: torch.Tensor,
        cache=None,
        past_key_values=None,  # the cache's name before transformers 5.24
        mamba_padding_mask=None,
        **_,
    ) -> torch.Tensor:
        hidden_states = hidden_states + self.mamba(
            self.input_layernorm(hidden_states),
            cache_params=cache if cache is not None else past_key_values,
            attention_mask=mamba_padding_mask,
        )
        return hidden_states + self.mlp(self.post_attention_layernorm(hidden_states))


class MistralMambaLayer(LlamaMambaLayer):
    norm_class, mlp_class = MistralRMSNorm, MistralMLP


def _swap_in_mamba(model: nn.Module, config, layer_class) -> None:
    """Replace the pattern's Mamba layers of a freshly built transformers model."""
    ours = model_config_from_hf(config)
    for i, kind in enumerate(ours.mixers):
        if kind != "attention":
            model.layers[i] = layer_class(config, build_mixer(kind, ours, i))


def _new_tokens_padding(attention_mask, new_tokens: int) -> torch.Tensor | None:
    """The 2D padding mask of the tokens this forward adds, or None when none is padding."""
    if attention_mask is None or attention_mask.dim() != 2 or bool(attention_mask.all()):
        return None
    return attention_mask[:, -new_tokens:]


class _HybridModel:
    """transformers' base model with the pattern's Mamba layers (`mamba_layer`) swapped in;
    uses HybridCache, which also counts past tokens for Mamba-only models. The Mamba layers get
    the padding mask of the new tokens (transformers hands layers only the attention mask it
    builds), through the keyword arguments transformers passes on to every layer."""

    mamba_layer: type[nn.Module]

    def __init__(self, config):
        super().__init__(config)
        _swap_in_mamba(self, config, self.mamba_layer)
        self.post_init()

    def forward(
        self,
        input_ids=None,
        cache=None,
        use_cache=None,
        inputs_embeds=None,
        past_key_values=None,  # the cache's name before transformers 5.24
        **kwargs,
    ):
        cache = cache if cache is not None else past_key_values
        use_cache = self.config.use_cache if use_cache is None else use_cache
        if use_cache and cache is None:
            cache = HybridCache(config=self.config)
        tokens = input_ids if input_ids is not None else inputs_embeds
        padding = _new_tokens_padding(kwargs.get("attention_mask"), tokens.shape[1])
        if padding is not None:
            kwargs["mamba_padding_mask"] = padding
        out = super().forward(
            input_ids=input_ids,
            use_cache=use_cache,
            inputs_embeds=inputs_embeds,
            **{_cache_argument(type(self)): cache},
            **kwargs,
        )
        if isinstance(cache, HybridCache):
            cache.tokens_seen += tokens.shape[1]
        return out


@functools.cache
def _cache_argument(model_class: type) -> str:
    """The name of the cache argument of `model_class`'s transformers base model (transformers
    5.24 renamed `past_key_values` to `cache`); read once per class."""
    base = next(c for c in model_class.__mro__ if c.__module__.startswith("transformers."))
    parameters = inspect.signature(base.forward).parameters
    return "cache" if "cache" in parameters else "past_key_values"


class _HybridForCausalLM:
    def _prepare_cache_for_generation(self, generation_config, model_kwargs, *args, **kwargs):
        super()._prepare_cache_for_generation(generation_config, model_kwargs, *args, **kwargs)
        for name in ("cache", "past_key_values"):  # its name from transformers 5.24 on, before
            if type(model_kwargs.get(name)) is DynamicCache:
                model_kwargs[name] = HybridCache(config=self.config)


class GPTNeoXHybridModel(_HybridModel, GPTNeoXModel):
    config_class = GPTNeoXHybridConfig
    mamba_layer = GPTNeoXMambaLayer


class LlamaHybridModel(_HybridModel, LlamaModel):
    config_class = LlamaHybridConfig
    mamba_layer = LlamaMambaLayer


class MistralHybridModel(_HybridModel, MistralModel):
    config_class = MistralHybridConfig
    mamba_layer = MistralMambaLayer


class GPTNeoXHybridForCausalLM(_HybridForCausalLM, GPTNeoXForCausalLM):
    """The head keeps Pythia's (and CALD's) name, embed_out; transformers' GPTNeoX code reaches
    it as lm_head."""

    config_class = GPTNeoXHybridConfig
    _tied_weights_keys = {"embed_out.weight": "gpt_neox.embed_in.weight"}
    _tp_plan = {"embed_out": "colwise_gather_output"}
    _pp_plan = {"embed_out": (["hidden_states"], ["logits"])}

    def __init__(self, config: GPTNeoXHybridConfig):
        GPTNeoXPreTrainedModel.__init__(self, config)
        self.gpt_neox = GPTNeoXHybridModel(config)
        self.embed_out = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    @property
    def lm_head(self) -> nn.Linear:
        return self.embed_out

    @lm_head.setter
    def lm_head(self, value: nn.Linear) -> None:
        self.embed_out = value


class LlamaHybridForCausalLM(_HybridForCausalLM, LlamaForCausalLM):
    config_class = LlamaHybridConfig

    def __init__(self, config: LlamaHybridConfig):
        LlamaPreTrainedModel.__init__(self, config)
        self.model = LlamaHybridModel(config)
        self.vocab_size = config.vocab_size
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()


class MistralHybridForCausalLM(_HybridForCausalLM, MistralForCausalLM):
    config_class = MistralHybridConfig

    def __init__(self, config: MistralHybridConfig):
        MistralPreTrainedModel.__init__(self, config)
        self.model = MistralHybridModel(config)
        self.vocab_size = config.vocab_size
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()


HYBRID_MODELS = {
    GPTNeoXHybridConfig: GPTNeoXHybridForCausalLM,
    LlamaHybridConfig: LlamaHybridForCausalLM,
    MistralHybridConfig: MistralHybridForCausalLM,
}
