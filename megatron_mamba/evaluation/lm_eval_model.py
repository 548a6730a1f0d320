"""lm-eval's model `megatron_mamba`: a native checkpoint (or an HF export) under lm-eval's own HF
model, which brings batching by length, the logits cache, stop sequences, chat templates and
data parallelism (accelerate launch).

A native checkpoint, saved at any TP/PP, is built in memory as the transformers model its export
would load as (no files written): attention layers keep a KV cache and Mamba layers their conv
and SSM state during generation, and padding is masked out of the Mamba layers, so batched
requests score and generate as they would one by one.

    lm_eval-style:  MegatronMambaLM(pretrained="runs/student", dtype="bfloat16", batch_size=16)
    model_args:     pretrained=runs/student,tokenizer=hf/pythia-160m,dtype=bfloat16
"""

from __future__ import annotations

from pathlib import Path

import torch
from lm_eval.models.huggingface import HFLM
from lm_eval.models.utils_hf import get_dtype

from megatron_mamba.convert.exporter import hf_config_for, load_as_transformers
from megatron_mamba.convert.hf_files import TOKENIZER_FILES
from megatron_mamba.training.checkpoint import CHECKPOINTS, LATEST, read_model_config


def is_native_checkpoint(path: str | Path) -> bool:
    """A native run/import directory, its checkpoints/ directory, or one checkpoint."""
    path = Path(path)
    if (path / "config.json").is_file():
        return False
    return any(
        (holder / LATEST).is_file() or (holder / "metadata.json").is_file()
        for holder in (path, path / CHECKPOINTS)
    )


def _tokenizer_dir(path: Path) -> Path | None:
    """The nearest directory at or above a checkpoint that holds tokenizer files."""
    for candidate in (path, *path.parents):
        if any((candidate / name).is_file() for name in TOKENIZER_FILES):
            return candidate
    return None


class MegatronMambaLM(HFLM):
    def __init__(self, pretrained: str, tokenizer=None, **kwargs):
        pretrained = str(pretrained)
        if tokenizer is None and is_native_checkpoint(pretrained):
            found = _tokenizer_dir(Path(pretrained))
            if found is None:
                raise ValueError(
                    f"{pretrained} holds no tokenizer files (an imported checkpoint keeps its "
                    "source's; a training run does not): pass tokenizer=<HF tokenizer directory>"
                )
            tokenizer = str(found)
        kwargs.setdefault("backend", "causal")  # lm-eval knows only its built-in model types
        super().__init__(pretrained=pretrained, tokenizer=tokenizer, **kwargs)

    def _get_config(self, pretrained: str, **kwargs) -> None:
        if not is_native_checkpoint(pretrained):
            return super()._get_config(pretrained, **kwargs)
        self._config = hf_config_for(read_model_config(Path(pretrained)), torch.float32)

    def _create_model(self, pretrained: str, dtype="auto", **kwargs) -> None:
        if not is_native_checkpoint(pretrained):
            return super()._create_model(pretrained, dtype=dtype, **kwargs)
        unsupported = [
            name
            for name in ("parallelize", "tp_plan", "peft", "delta", "autogptq", "gptqmodel")
            if kwargs.get(name)
        ]
        if unsupported:
            raise ValueError(
                f"{', '.join(unsupported)} cannot be used with a native checkpoint; export it "
                "(tools/convert_native_to_hf.py) and evaluate the export"
            )
        dtype = torch.float32 if dtype in (None, "auto") else get_dtype(dtype)
        self._model = load_as_transformers(pretrained, dtype)
