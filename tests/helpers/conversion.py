"""Tiny transformers checkpoints saved for conversion tests, and the native model read back."""

import json
from pathlib import Path

import pytest
import torch

from megatron_mamba.config import ParallelConfig
from megatron_mamba.convert.importer import import_hf
from megatron_mamba.models.build import build_model
from megatron_mamba.training.checkpoint import load_weights, read_model_config
from tests.helpers.hf_tiny import VOCAB, randomize_norms, tiny_gpt_neox, tiny_llama, tiny_mistral

ARCHS = {
    "gpt_neox": lambda: tiny_gpt_neox(True, layers=3),
    "gpt_neox_sequential": lambda: tiny_gpt_neox(False, layers=3),
    "llama_tied": lambda: tiny_llama(tied=True, layers=3),
    "mistral": lambda: tiny_mistral(window=32, layers=3),
}


def sample_tokens(seq: int = 12) -> torch.Tensor:
    return torch.randint(0, VOCAB, (2, seq), generator=torch.Generator().manual_seed(5))


def saved(kind, path, **save):
    model = ARCHS[kind]() if isinstance(kind, str) else kind()
    randomize_norms(model)
    model.save_pretrained(path, **save)
    return model


def edit_config(directory: Path, **changes) -> None:
    """Change fields of a saved HF config.json (a config that no longer fits its weights)."""
    config = json.loads((directory / "config.json").read_text())
    (directory / "config.json").write_text(json.dumps({**config, **changes}))


def refused(directory: Path, error, match: str, output: Path) -> None:
    """Importing `directory` fails with `error` matching `match`, writing nothing."""
    with pytest.raises(error, match=match):
        import_hf(directory, output, progress=False)
    assert not list(output.parent.glob(f"{output.name}*"))


def native_model(path):
    config = read_model_config(path)
    model = build_model(config, ParallelConfig())
    load_weights(path / "checkpoints" / "step_00000000", model)
    return model.eval(), config


def native_logits(model, tokens):
    with torch.no_grad():
        return model(tokens, None, None)[..., :VOCAB]


def assert_relative(got, expected, tol):
    rel = ((got - expected).abs().max() / expected.abs().max()).item()
    assert rel <= tol, f"relative error {rel:.2e}"
