"""transformers configs of hybrid models: the base architecture's config plus the layer pattern and
the Mamba settings (our MambaConfig's fields), one model type per base architecture."""

from __future__ import annotations

from huggingface_hub.dataclasses import strict
from transformers import GPTNeoXConfig, LlamaConfig, MistralConfig

from megatron_mamba.models.layer_pattern import parse_layer_pattern


class _Hybrid:
    """What the hybrid configs add: `layer_pattern` (A attention, M mamba1, S mamba2) and
    `mamba`; transformers' cache reads `layer_types` to give Mamba layers conv/SSM state."""

    def __post_init__(self, **kwargs):
        self.layer_pattern = parse_layer_pattern(self.layer_pattern or None, self.num_hidden_layers)
        self.mamba = dict(self.mamba or {})
        super().__post_init__(**kwargs)

    @property
    def layer_types(self) -> list[str]:
        return ["full_attention" if s == "A" else "linear_attention" for s in self.layer_pattern]


@strict
class GPTNeoXHybridConfig(_Hybrid, GPTNeoXConfig):
    model_type = "gpt_neox_hybrid"
    layer_pattern: str = ""
    mamba: dict | None = None


@strict
class LlamaHybridConfig(_Hybrid, LlamaConfig):
    model_type = "llama_hybrid"
    layer_pattern: str = ""
    mamba: dict | None = None


@strict
class MistralHybridConfig(_Hybrid, MistralConfig):
    model_type = "mistral_hybrid"
    layer_pattern: str = ""
    mamba: dict | None = None


HYBRID_CONFIGS = {
    "gpt_neox": GPTNeoXHybridConfig,
    "llama": LlamaHybridConfig,
    "mistral": MistralHybridConfig,
}
