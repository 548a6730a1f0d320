"""lm-eval's model `megatron_mamba`: a native checkpoint (or an HF export) under lm-eval's own HF
model, which brings tokenisation, rolling windows, stop sequences, chat templates and data
parallelism (accelerate launch). Scoring is ours: the LM head and the log-softmax run on the
continuation tokens alone, in fp32, instead of on every position of every padded row.

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
import torch.nn.functional as F
from lm_eval.models.huggingface import HFLM
from lm_eval.models.utils_hf import get_dtype
from transformers import AutoConfig

import megatron_mamba.hf  # noqa: F401  (registers the hybrid classes with transformers' Auto*)
from megatron_mamba.convert.exporter import hf_config_for, load_as_transformers
from megatron_mamba.convert.hf_files import (
    check_tokenizer_source,
    find_tokenizer_dir,
    has_tokenizer,
    load_tokenizer,
)
from megatron_mamba.training.checkpoint import (
    CheckpointError,
    find_checkpoint,
    read_model_config,
)


def is_native_checkpoint(path: str | Path) -> bool:
    """A native run/import directory, its checkpoints/ directory, or one checkpoint."""
    path = Path(path)
    if (path / "config.json").is_file():
        return False
    try:
        find_checkpoint(path, path)
    except CheckpointError:
        return False
    return True


def check_checkpoint(pretrained: str | Path, tokenizer=None):
    """The tokenizer to load `pretrained` with. Refused before any model is built (lm-eval
    would fail later with a traceback): a directory that is neither a native checkpoint nor a
    transformers one; a `tokenizer` directory that is missing or holds no tokenizer files; a
    checkpoint with no tokenizer (its own, or for a native one the nearest above it); and a
    tokenizer with more tokens than the model's vocabulary (its ids would index past the
    embedding)."""
    path = Path(pretrained)
    if isinstance(tokenizer, str | Path):
        check_tokenizer_source(tokenizer)
    if not path.is_dir():  # a hub name: lm-eval's own loading
        return tokenizer
    native = is_native_checkpoint(path)
    if not native and not (path / "config.json").is_file():
        raise ValueError(
            f"{path} is neither a native checkpoint (a run, import or checkpoint directory) nor "
            "a transformers directory (config.json)"
        )
    source = tokenizer if tokenizer is not None else _own_tokenizer(path, native)
    if isinstance(source, str | Path):
        _check_vocabulary(path, native, source)
    return str(source) if tokenizer is None and native else tokenizer


def _own_tokenizer(path: Path, native: bool) -> Path:
    """The directory of the tokenizer a checkpoint comes with: a transformers directory's own,
    a native checkpoint's nearest at or above it (an import keeps its source's)."""
    found = find_tokenizer_dir(path) if native else (path if has_tokenizer(path) else None)
    if found is None:
        why = " (an imported checkpoint keeps its source's; a training run does not)"
        raise ValueError(
            f"{path} holds no tokenizer files{why if native else ''}: give its HF tokenizer "
            "directory (run_lm_evals.py --tokenizer, or tokenizer= in lm-eval's --model_args)"
        )
    return found


def _check_vocabulary(path: Path, native: bool, source: str | Path) -> None:
    vocab = _vocab_size(path, native)
    size = len(load_tokenizer(source))
    if vocab is not None and size > vocab:
        raise ValueError(
            f"the tokenizer in {source} has {size} tokens, more than the vocab_size={vocab} of "
            f"{path}; expected the tokenizer the model was trained with"
        )


def _vocab_size(path: Path, native: bool) -> int | None:
    if native:
        return read_model_config(path).vocab_size
    try:
        return getattr(AutoConfig.from_pretrained(path), "vocab_size", None)
    except Exception as error:  # noqa: BLE001  (whatever transformers' config loader raises)
        reason = (str(error).strip() or type(error).__name__).splitlines()[0]
        raise ValueError(f"{path / 'config.json'} cannot be read: {reason}") from None


class MegatronMambaLM(HFLM):
    def __init__(self, pretrained: str, tokenizer=None, **kwargs):
        pretrained = str(pretrained)
        tokenizer = check_checkpoint(pretrained, tokenizer)
        kwargs.setdefault("backend", "causal")  # lm-eval knows only its built-in model types
        super().__init__(pretrained=pretrained, tokenizer=tokenizer, **kwargs)
        if isinstance(self.batch_size, int) and self.batch_size < 1:  # no batch would be scored
            raise ValueError(f"batch_size={self.batch_size}: give a positive integer or 'auto'")

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

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, override_bs=None):
        """(log-likelihood, is greedy) of each (strings, context ids, continuation ids), longest
        first in batches; contexts are cut from the left to fit max_length, as lm-eval does."""
        size = override_bs or self.batch_size
        if not isinstance(size, int):  # "auto": lm-eval's own batch-size search
            return super()._loglikelihood_tokens(requests, disable_tqdm, override_bs)
        for i, (strings, context, continuation) in enumerate(requests):
            # lm-eval's hf model asserts both: without context the first continuation token has
            # no position to be predicted from, and an empty continuation would score 0
            for name, ids in (("context", context), ("continuation", continuation)):
                if not ids:
                    text = "" if strings is None else f" {strings!r}"
                    raise ValueError(f"request {i}{text} has no {name} tokens")
        order = sorted(range(len(requests)), key=lambda i: -len(requests[i][1] + requests[i][2]))
        results: list = [None] * len(requests)
        for start in range(0, len(order), size):
            rows = order[start : start + size]
            scored = self._score([requests[i][1:] for i in rows])
            for i, answer in zip(rows, scored, strict=True):
                results[i] = answer
                if requests[i][0] is not None:
                    self.cache_hook.add_partial("loglikelihood", requests[i][0], answer)
        return results

    @torch.no_grad()
    def _score(self, pairs: list[tuple[list[int], list[int]]]) -> list[tuple[float, bool]]:
        inputs, rows, positions, targets = [], [], [], []
        for row, (context, continuation) in enumerate(pairs):
            if len(continuation) > self.max_length:  # no context left to predict its first token
                raise ValueError(
                    f"a continuation of {len(continuation)} tokens is longer than max_length="
                    f"{self.max_length}; raise max_length"
                )
            whole = (context + continuation)[-(self.max_length + 1) :]
            inputs.append(whole[:-1])
            first = len(whole) - 1 - len(continuation)
            rows += [row] * len(continuation)
            positions += range(first, first + len(continuation))
            targets += continuation
        width = max(len(ids) for ids in inputs)
        batch = torch.zeros((len(inputs), width), dtype=torch.long)
        for row, ids in enumerate(inputs):  # right padding: causal models ignore it
            batch[row, : len(ids)] = torch.tensor(ids)
        hidden = self.model.base_model(input_ids=batch.to(self.device), use_cache=False)
        rows_t = torch.tensor(rows, device=self.device)
        picked = hidden.last_hidden_state[rows_t, torch.tensor(positions, device=self.device)]
        logits = self.model.get_output_embeddings()(picked).float()
        targets_t = torch.tensor(targets, device=self.device)
        token_ll = F.log_softmax(logits, dim=-1).gather(-1, targets_t[:, None])[:, 0]
        missed = (logits.argmax(-1) != targets_t).float()
        total = torch.zeros(len(pairs), dtype=torch.float64, device=self.device)
        total.index_add_(0, rows_t, token_ll.double())
        misses = torch.zeros(len(pairs), device=self.device).index_add_(0, rows_t, missed)
        return [
            (float(t), bool(m == 0)) for t, m in zip(total.tolist(), misses.tolist(), strict=True)
        ]
