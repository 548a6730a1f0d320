"""Which parameters get weight decay: never norms or biases; with weight_decay_mamba_only
(CALD's flag) only the Mamba mixers' weights, so the pretrained Transformer parts are not pulled
towards zero while the new mixers are regularised."""

from __future__ import annotations

import torch

from megatron_mamba.models.mamba1 import Mamba1Mixer
from megatron_mamba.models.mamba2 import Mamba2Mixer


def _mamba_parameter_ids(model: torch.nn.Module) -> set[int]:
    return {
        id(p)
        for module in model.modules()
        if isinstance(module, (Mamba1Mixer, Mamba2Mixer))
        for p in module.parameters()
    }


def decays(name: str, mamba_ids: set[int], param: torch.Tensor, mamba_only: bool) -> bool:
    leaf = name.rsplit(".", 1)[-1]
    if "bias" in leaf or "norm" in name:
        return False  # CALD's no_decay: "bias", "norm.weight" (our norms all carry "norm")
    return id(param) in mamba_ids if mamba_only else True


def megatron_weight_decay_overrides(model: torch.nn.Module, mamba_only: bool) -> dict:
    """`decays` as megatron's optimizer takes it: parameters that do not decay get wd_mult 0."""
    from megatron.core.optimizer.optimizer_config import ParamKey, ParamWithNamePredicate
    from megatron.core.optimizer_param_scheduler import ParamGroupOverride

    mamba_ids = _mamba_parameter_ids(model)
    spared = ParamWithNamePredicate(
        name=f"no_decay_mamba_only_{mamba_only}",
        fn=lambda param, name: not decays(name, mamba_ids, param, mamba_only),
    )
    return {ParamKey(with_name_predicate=spared): ParamGroupOverride(wd_mult=0.0)}


def freeze_all_but_mamba(model: torch.nn.Module) -> int:
    """MambaInLlama's stage-1 setting: only the Mamba mixers train (embeddings, norms, MLPs and
    the attention layers kept stay as they are). Returns the number of trainable parameters."""
    mamba_ids = _mamba_parameter_ids(model)
    for param in model.parameters():
        param.requires_grad_(id(param) in mamba_ids)
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
