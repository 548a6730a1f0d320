"""transformers configs of hybrid models: the base architecture's config plus the layer pattern and
the Mamba settings (our MambaConfig's fields), one model type per base architecture."""

from __future__ import annotations

import os
from pathlib import Path

from huggingface_hub.dataclasses import strict
from transformers import GPTNeoXConfig, LlamaConfig, MistralConfig

from megatron_mamba.convert.hf_config import model_config_from_hf
from megatron_mamba.convert.mamba_in_llama import write_mamba_in_llama_config
from megatron_mamba.models.layer_pattern import parse_layer_pattern

REMOTE_CODE = "modeling_hybrid.py"
"""What a saved hybrid directory's auto_map names: it imports our classes from the package, so
that `trust_remote_code=True` loads the directory in a process that has not imported them."""

_REMOTE_CODE_TEXT = (
    "# The hybrid classes live in the megatron_mamba package (pip install it).\n"
    "from megatron_mamba.hf.configuration import *  # noqa: F401,F403\n"
    "from megatron_mamba.hf.modeling import *  # noqa: F401,F403\n"
)


class _Hybrid:
    """What the hybrid configs add: `layer_pattern` (A attention, M mamba1, S mamba2) and
    `mamba`; transformers' cache reads `layer_types` to give Mamba layers conv/SSM state.
    Saving writes modeling_hybrid.py and points auto_map at it, and MambaInLlama's
    mamba_config.json where that format applies (a model's save_pretrained saves its config, so
    it does too: TRL's outputs stay in both formats)."""

    def __post_init__(self, **kwargs):
        self.layer_pattern = parse_layer_pattern(self.layer_pattern or None, self.num_hidden_layers)
        self.mamba = dict(self.mamba or {})
        super().__post_init__(**kwargs)

    @property
    def layer_types(self) -> list[str]:
        return ["full_attention" if s == "A" else "linear_attention" for s in self.layer_pattern]

    def save_pretrained(self, save_directory, *args, **kwargs):
        """transformers' save, plus modeling_hybrid.py and mamba_config.json, written first so a
        push uploads them."""
        name = type(self).__name__.removesuffix("Config")
        module = REMOTE_CODE.removesuffix(".py")
        self.auto_map = {
            "AutoConfig": f"{module}.{name}Config",
            "AutoModelForCausalLM": f"{module}.{name}ForCausalLM",
        }
        os.makedirs(save_directory, exist_ok=True)
        (Path(save_directory) / REMOTE_CODE).write_text(_REMOTE_CODE_TEXT)
        write_mamba_in_llama_config(model_config_from_hf(self), save_directory)
        return super().save_pretrained(save_directory, *args, **kwargs)

    @classmethod
    def register_for_auto_class(cls, auto_class="AutoConfig"):
        """Nothing. transformers registers a class it loaded as remote code, and then saving
        copies the class's module file (here configuration.py) and names it in auto_map, which
        then misses the model classes; save_pretrained writes modeling_hybrid.py instead."""


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
