"""A transformers state dict (in memory) as the native one, through the conversion tables."""

from __future__ import annotations

import torch

from megatron_mamba.config import ModelConfig
from megatron_mamba.convert.mapping import Context, expand, resolve, to_native
from megatron_mamba.convert.tables import table_for


def native_from_hf(
    hf: dict[str, torch.Tensor], model: ModelConfig, tensor_parallel: int = 1
) -> dict[str, torch.Tensor]:
    """Every native tensor whose transformers sources `hf` holds (optional ones such as biases
    only where present; a hybrid config's Mamba layers have none in an attention model)."""
    table = table_for(model)
    entries = expand(table, model)

    def read(name: str) -> torch.Tensor:
        return hf[resolve(name, hf.keys(), table.aliases)]

    names = [
        n
        for n, entry in entries.items()
        if all(resolve(h, hf.keys(), table.aliases) for h in entry.hf)
    ]
    return dict(to_native(entries, names, read, Context(model, tensor_parallel)))
