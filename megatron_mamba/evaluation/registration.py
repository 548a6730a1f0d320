"""Registers the lm-eval model `megatron_mamba` lazily: lm-eval imports the adapter (and
transformers, torch, ...) only when the model is asked for."""

from __future__ import annotations

import importlib.util

MODEL_NAME = "megatron_mamba"
_TARGET = "megatron_mamba.evaluation.lm_eval_model:MegatronMambaLM"


def register_with_lm_eval() -> None:
    if importlib.util.find_spec("lm_eval") is None:
        return
    # lm-eval registers its own models (hf, vllm, ...) only while its registry is empty: an
    # entry of ours first would hide them all. The module registers them lazily (cheap).
    import lm_eval.models  # noqa: F401
    from lm_eval.api.registry import model_registry

    if MODEL_NAME not in model_registry:
        model_registry.register(MODEL_NAME, target=_TARGET)
