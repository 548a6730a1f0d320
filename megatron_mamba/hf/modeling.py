"""transformers models of hybrids: transformers' own GPTNeoX / Llama / Mistral with the layer
pattern's Mamba layers swapped in (block norms and MLP kept, as in training).

Attention layers are transformers' own, so a hybrid export differs from the plain architecture only
where Mamba is. Weight names follow CALD (GPTNeoX: `gpt_neox.layers.{i}.attention.mamba.*`) and
MambaInLlama (Llama/Mistral: `model.layers.{i}.mamba.*`). Generation uses transformers' cache:
key/value for attention layers, conv and SSM state for Mamba layers. Padding and packed documents
(restarting position_ids) reach the Mamba layers as they reach attention.
"""

from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass

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
from transformers.masking_utils import find_packed_sequence_indices
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.models.gpt_neox.modeling_gpt_neox import (
    GPTNeoXAttention,
    GPTNeoXLayer,
    GPTNeoXMLP,
    GPTNeoXPreTrainedModel,
)
from transformers.models.llama.modeling_llama import (
    LlamaAttention,
    LlamaDecoderLayer,
    LlamaMLP,
    LlamaPreTrainedModel,
    LlamaRMSNorm,
)
from transformers.models.mistral.modeling_mistral import (
    MistralAttention,
    MistralDecoderLayer,
    MistralMLP,
    MistralPreTrainedModel,
    MistralRMSNorm,
)

from megatron_mamba.convert.hf_config import model_config_from_hf
from megatron_mamba.hf.cache import HybridCache, as_hybrid_cache
from megatron_mamba.hf.configuration import (
    GPTNeoXHybridConfig,
    LlamaHybridConfig,
    MistralHybridConfig,
)
from megatron_mamba.hf.mixers import build_mixer
from megatron_mamba.hf.weights_fit import check_weights_fit


@dataclass(frozen=True)
class PackedDocuments:
    """Where each token of packed rows goes when every document is a row of its own: token
    [b, t] is row `document[b, t]`, position `position[b, t]`; `keep` masks each row's tokens.
    Found once per forward and shared by all Mamba layers."""

    document: torch.Tensor
    position: torch.Tensor
    keep: torch.Tensor

    @classmethod
    def of(cls, numbers: torch.Tensor) -> PackedDocuments:
        """From each token's document number within its row [b, l]."""
        counts = numbers[:, -1] + 1  # documents per row, numbered on across the batch
        document = numbers + (torch.cumsum(counts, 0) - counts)[:, None]
        lengths = torch.bincount(document.flatten())
        starts = torch.cumsum(lengths, 0) - lengths
        position = torch.arange(document.numel(), device=document.device).view_as(document)
        position = position - starts[document]
        keep = torch.arange(int(lengths.max()), device=document.device) < lengths[:, None]
        return cls(document, position, keep)


def _mix(mixer: nn.Module, hidden_states, cache, padding, documents) -> torch.Tensor:
    """The mixer's output. Packed documents (several in one row, told apart by restarting
    position_ids, as TRL's padding-free training and packing send them) each run as a row of their
    own, so that no conv or SSM state passes from one to the next: the attention layers keep them
    apart too."""
    if documents is None:
        return mixer(hidden_states, cache=cache, attention_mask=padding)
    index = (documents.document, documents.position)
    rows = hidden_states.new_zeros(*documents.keep.shape, hidden_states.shape[-1])
    rows = rows.index_put(index, hidden_states)
    return mixer(rows, cache=None, attention_mask=documents.keep.long())[index]


def _packed_documents(arguments: dict, cache) -> PackedDocuments | None:
    """Where packed documents go when rows hold several, else None; found as transformers finds
    them for the attention mask (from position_ids, with no attention mask and no cache)."""
    positions = arguments.get("position_ids")
    if positions is None or arguments.get("attention_mask") is not None or cache is not None:
        return None
    tokens = arguments.get("input_ids")
    batch = (tokens if tokens is not None else arguments["inputs_embeds"]).shape[0]
    numbers = find_packed_sequence_indices(positions.expand(batch, -1))
    return None if numbers is None else PackedDocuments.of(numbers)


class GPTNeoXMambaLayer(GradientCheckpointingLayer):
    """CALD's GPTNeoXMambaLayer: GPTNeoX's norms, MLP and residual form around a Mamba mixer
    (held as attention.mamba). A GradientCheckpointingLayer, like transformers' own layers: it
    checkpoints with them, and `output_hidden_states` records it (see _HybridModel)."""

    def __init__(self, config: GPTNeoXHybridConfig, mixer: nn.Module):
        super().__init__()
        self.use_parallel_residual = config.use_parallel_residual
        self.input_layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.post_attention_layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.attention = nn.Module()
        self.attention.mamba = mixer
        self.mlp = GPTNeoXMLP(config)

    def forward(
        self,
        hidden_states: torch.Tensor,
        layer_past=None,
        mamba_padding_mask=None,
        mamba_documents=None,
        **_,
    ) -> torch.Tensor:
        mixed = _mix(
            self.attention.mamba,
            self.input_layernorm(hidden_states),
            layer_past,
            mamba_padding_mask,
            mamba_documents,
        )
        if self.use_parallel_residual:
            return hidden_states + mixed + self.mlp(self.post_attention_layernorm(hidden_states))
        mixed = mixed + hidden_states
        return mixed + self.mlp(self.post_attention_layernorm(mixed))


class LlamaMambaLayer(GradientCheckpointingLayer):
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
        mamba_documents=None,
        **_,
    ) -> torch.Tensor:
        hidden_states = hidden_states + _mix(
            self.mamba,
            self.input_layernorm(hidden_states),
            cache if cache is not None else past_key_values,
            mamba_padding_mask,
            mamba_documents,
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
    """The 2D padding mask of the tokens this forward adds, or None when none is padding (or the
    mask is not a 2D padding mask)."""
    if not isinstance(attention_mask, torch.Tensor) or attention_mask.dim() != 2:
        return None
    if bool(attention_mask.all()):
        return None
    return attention_mask[:, -new_tokens:]


class _HybridModel:
    """transformers' base model with the pattern's Mamba layers (`mamba_layer`) swapped in;
    uses HybridCache, which also counts past tokens for Mamba-only models. The Mamba layers get
    the padding mask of the new tokens (transformers hands layers only the attention mask it
    builds), through the keyword arguments transformers passes on to every layer. Subclasses list
    their Mamba layer with the base's decoder layer in `_can_record_outputs`, so that
    `output_hidden_states` records every layer."""

    mamba_layer: type[nn.Module]

    def __init__(self, config):
        super().__init__(config)
        _swap_in_mamba(self, config, self.mamba_layer)
        self.post_init()

    def forward(self, *args, **kwargs):
        """The base model's forward, taking its arguments as it does (positional ones in its
        order, which differs between GPTNeoX and Llama). A plain DynamicCache becomes a
        HybridCache in place (`as_hybrid_cache`)."""
        arguments = _as_base_arguments(type(self), self, args, kwargs)
        cache = arguments.pop("cache", None)
        legacy = arguments.pop("past_key_values", None)  # the cache's name before transformers 5.24
        cache = as_hybrid_cache(legacy if cache is None else cache)
        use_cache = arguments.pop("use_cache", None)
        use_cache = self.config.use_cache if use_cache is None else use_cache
        if use_cache and cache is None:
            cache = HybridCache(config=self.config)
        tokens = arguments.get("input_ids")
        tokens = tokens if tokens is not None else arguments["inputs_embeds"]
        padding = _new_tokens_padding(arguments.get("attention_mask"), tokens.shape[1])
        if padding is not None:
            arguments["mamba_padding_mask"] = padding
        documents = _packed_documents(arguments, cache)
        if documents is not None:
            arguments["mamba_documents"] = documents
        arguments[_cache_argument(type(self))] = cache
        out = super().forward(use_cache=use_cache, **arguments)
        if isinstance(cache, HybridCache):
            cache.tokens_seen += tokens.shape[1]
        return out


@functools.cache
def _base_signature(model_class: type) -> inspect.Signature:
    """The signature of the forward of `model_class`'s transformers base model; read once."""
    base = next(c for c in model_class.__mro__ if c.__module__.startswith("transformers."))
    return inspect.signature(base.forward)


def _as_base_arguments(model_class: type, model, args: tuple, kwargs: dict) -> dict:
    """`args` and `kwargs` by name, bound as the base model's forward binds them (its **kwargs
    merged in)."""
    signature = _base_signature(model_class)
    arguments = signature.bind(model, *args, **kwargs).arguments
    arguments.pop(next(iter(signature.parameters)))  # self
    for name, parameter in signature.parameters.items():
        if parameter.kind is inspect.Parameter.VAR_KEYWORD:
            arguments.update(arguments.pop(name, {}))
    return dict(arguments)


def _cache_argument(model_class: type) -> str:
    """The name of the cache argument of `model_class`'s transformers base model (transformers
    5.24 renamed `past_key_values` to `cache`)."""
    parameters = _base_signature(model_class).parameters
    return "cache" if "cache" in parameters else "past_key_values"


class _HybridForCausalLM:
    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        """transformers' load, refusing weights that do not fit the config (check_weights_fit)
        unless ignore_mismatched_sizes=True asks for transformers' leniency."""
        wants_info = kwargs.pop("output_loading_info", False)
        lenient = kwargs.pop("ignore_mismatched_sizes", False)
        model, info = super().from_pretrained(
            pretrained_model_name_or_path,
            *args,
            output_loading_info=True,
            ignore_mismatched_sizes=True,  # sizes are checked below, in one sentence
            **kwargs,
        )
        if not lenient:
            check_weights_fit(pretrained_model_name_or_path, model.config, info)
        return (model, info) if wants_info else model

    def _prepare_cache_for_generation(self, generation_config, model_kwargs, *args, **kwargs):
        """generate's cache as a HybridCache: the DynamicCache generate makes, or one passed in,
        is converted in place (so a cache passed in is the one filled, and keeps what it holds).
        Other caches (static, ...) are used as they are where the model has attention layers,
        and refused where it has none (they would only hold keys and values)."""
        super()._prepare_cache_for_generation(generation_config, model_kwargs, *args, **kwargs)
        for name in ("cache", "past_key_values"):  # its name from transformers 5.24 on, before
            cache = model_kwargs.get(name)
            if cache is None:
                continue
            if not isinstance(cache, DynamicCache) and "A" not in self.config.layer_pattern:
                raise ValueError(
                    f"a {type(cache).__name__} is for attention layers, and this model (layer "
                    f"pattern {self.config.layer_pattern}) has none: leave cache_implementation "
                    "unset (its Mamba state does not grow with the sequence)"
                )
            model_kwargs[name] = as_hybrid_cache(cache)

    def _valid_auto_compile_criteria(self, *args, **kwargs) -> bool:
        """Never: with a static cache on a GPU generate would compile the forward by itself, and
        the Mamba layers (their kernels, their data-dependent padding checks) have not been tried
        under torch.compile."""
        return False

    def create_masks_for_generate(self, attention_mask=None, **_):
        """The 2D padding mask as it is. For a static cache generate would build the masks ahead,
        as a dict per layer type, which transformers' GPTNeoX / Llama / Mistral models do not
        take; from the 2D mask they build their own, and the Mamba layers get its padding (as
        transformers does for layer types it has no mask function for)."""
        return attention_mask

    @classmethod
    def register_for_auto_class(cls, auto_class="AutoModel"):
        """Nothing: these classes live in the megatron_mamba package, so save_pretrained must not
        copy their module files (it writes the config's modeling_hybrid.py instead)."""


class GPTNeoXHybridModel(_HybridModel, GPTNeoXModel):
    config_class = GPTNeoXHybridConfig
    mamba_layer = GPTNeoXMambaLayer
    _can_record_outputs = {
        "hidden_states": [GPTNeoXLayer, GPTNeoXMambaLayer],
        "attentions": GPTNeoXAttention,
    }


class LlamaHybridModel(_HybridModel, LlamaModel):
    config_class = LlamaHybridConfig
    mamba_layer = LlamaMambaLayer
    _can_record_outputs = {
        "hidden_states": [LlamaDecoderLayer, LlamaMambaLayer],
        "attentions": LlamaAttention,
    }


class MistralHybridModel(_HybridModel, MistralModel):
    config_class = MistralHybridConfig
    mamba_layer = MistralMambaLayer
    _can_record_outputs = {
        "hidden_states": [MistralDecoderLayer, MistralMambaLayer],
        "attentions": MistralAttention,
    }


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

    def __setattr__(self, name: str, value) -> None:
        """`lm_head = head` (resize_token_embeddings, set_output_embeddings) sets embed_out:
        nn.Module would register a module value as a second head beside it, unread."""
        super().__setattr__("embed_out" if name == "lm_head" else name, value)


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
