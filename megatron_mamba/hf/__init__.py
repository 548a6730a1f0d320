"""transformers classes for hybrid exports; importing this package registers them with
AutoConfig / AutoModelForCausalLM, so `AutoModelForCausalLM.from_pretrained(export)` loads them."""

from __future__ import annotations

import functools


@functools.cache
def register() -> None:
    """Make AutoConfig and AutoModelForCausalLM know the hybrid model types (idempotent)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from megatron_mamba.hf.modeling import HYBRID_MODELS

    for config_class, model_class in HYBRID_MODELS.items():
        AutoConfig.register(config_class.model_type, config_class, exist_ok=True)
        AutoModelForCausalLM.register(config_class, model_class, exist_ok=True)


register()
