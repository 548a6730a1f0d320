"""Chat (SFT) and preference (DPO) examples: tokens through the tokenizer's chat template, with a
mask that is 1 exactly on assistant tokens (the only ones that carry loss).

The conversation is rendered once; each assistant turn's character span is found by rendering the
conversation up to that turn (with the generation prompt) and up to its end. Tokens are then
masked by their character offsets, so the mask is right however the tokenizer merges across turn
boundaries. A template whose renderings are not prefixes of each other is refused.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from megatron_mamba.data.indexed import DatasetError


@dataclass(frozen=True)
class MaskedTokens:
    input_ids: list[int]
    assistant_mask: list[int]
    """1 where the token belongs to an assistant turn."""


def _render(tokenizer, messages, generation_prompt: bool) -> str:
    return tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=generation_prompt
    )


_PLACEHOLDER = "\x00assistant turn\x00"


def _before_turn(tokenizer, messages: list[dict], k: int) -> str | None:
    """The rendering up to where assistant turn k's own text starts: the conversation so far
    with the generation prompt. transformers renders no empty conversation, so for a first turn
    it is what the template puts before that turn's content (its preamble, a default system
    prompt, the role header), found with a placeholder content; None if not found."""
    if k:
        return _render(tokenizer, messages[:k], True)
    probe = _render(tokenizer, [{**messages[0], "content": _PLACEHOLDER}], False)
    start = probe.find(_PLACEHOLDER)
    return probe[:start] if start >= 0 else None


def assistant_spans(
    tokenizer, messages: list[dict], first: int = 0
) -> tuple[str, list[tuple[int, int]]]:
    """The rendered conversation and the character spans of its assistant turns (those from
    message `first` on)."""
    text = _render(tokenizer, messages, False)
    spans = []
    for k, message in enumerate(messages):
        if k < first or message.get("role") != "assistant":
            continue
        before = _before_turn(tokenizer, messages, k)
        through = _render(tokenizer, messages[: k + 1], False)
        if before is None or not (text.startswith(through) and through.startswith(before)):
            raise DatasetError(
                "the chat template does not render a conversation as a prefix of its "
                f"continuation (at message {k}); assistant tokens cannot be located"
            )
        spans.append((len(before), len(through)))
    return text, spans


def _bos(tokenizer, text: str) -> list[int]:
    """[bos] where the tokenizer starts any text with it (Llama, Mistral) and the chat template
    has not put it there already (Llama 3's does, Zephyr's does not): alignment-handbook's
    Zephyr recipes tokenize the rendered chat as text, so their sequences begin with BOS."""
    bos = tokenizer.bos_token_id
    if bos is None or text.startswith(tokenizer.bos_token):
        return []
    return [bos] if tokenizer("", add_special_tokens=True)["input_ids"][:1] == [bos] else []


def with_empty_system(tokenizer, messages: list[dict]) -> list[dict]:
    """An empty system message first where the record has none and the chat template knows the
    role: alignment-handbook's auto_insert_empty_system_msg, with which Zephyr and MambaInLlama's
    SFT and DPO were trained (every sequence then starts "<|system|>\n</s>\n")."""
    if messages and messages[0].get("role") == "system":
        return messages
    if "system" not in (tokenizer.chat_template or ""):
        return messages
    return [{"role": "system", "content": ""}, *messages]


def _json_type(value) -> str:
    return "null" if value is None else type(value).__name__


def _check_messages(messages, where: str, name: str = "messages", text: bool = False) -> None:
    """Refuses, as a DatasetError naming `where` (the record) and `name` (its field), what the
    chat template cannot render: anything but a non-empty list of objects with string role and
    content (or, with `text`, a string)."""
    if text and isinstance(messages, str):
        return
    expected = ("text or " if text else "") + 'a list of {"role": ..., "content": ...} objects'
    if not isinstance(messages, list) or not messages:
        found = "an empty list" if messages == [] else f"a JSON {_json_type(messages)}"
        raise DatasetError(f"{where}: {name} is {found}; expected {expected}")
    for k, message in enumerate(messages):
        if not isinstance(message, dict):
            raise DatasetError(
                f"{where}: {name}[{k}] is a JSON {_json_type(message)}; expected an object "
                "with role and content"
            )
        for key in ("role", "content"):
            if key not in message:
                raise DatasetError(f"{where}: {name}[{k}] lacks {key}")
            if not isinstance(message[key], str):
                raise DatasetError(
                    f"{where}: {name}[{k}].{key} is a JSON {_json_type(message[key])}; "
                    "expected a string"
                )


def tokenize_chat(
    tokenizer,
    messages: list[dict],
    max_length: int | None = None,
    empty_system: bool = False,
    loss_from: int = 0,
    where: str = "a record",
) -> MaskedTokens:
    """The conversation's tokens, masked on its assistant turns from message `loss_from` on
    (counted in `messages` as given); cut to `max_length` from the right. Malformed messages
    are a DatasetError naming `where`."""
    _check_messages(messages, where)
    if empty_system:
        inserted = with_empty_system(tokenizer, messages)
        loss_from += len(inserted) - len(messages)
        messages = inserted
    text, spans = assistant_spans(tokenizer, messages, loss_from)
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    mask = [
        int(any(lo <= start < hi for lo, hi in spans)) for start, _ in encoded["offset_mapping"]
    ]
    bos = _bos(tokenizer, text)
    ids, mask = bos + encoded["input_ids"], [0] * len(bos) + mask
    if max_length is not None:
        ids, mask = ids[:max_length], mask[:max_length]
    return MaskedTokens(ids, mask)


@dataclass(frozen=True)
class PreferencePair:
    chosen: MaskedTokens
    rejected: MaskedTokens


def _as_messages(prompt, response) -> list[dict]:
    prompt = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
    if isinstance(response, str):
        return [*prompt, {"role": "assistant", "content": response}]
    # UltraFeedback-style: the response is the whole conversation, prompt included.
    return list(response) if response[: len(prompt)] == prompt else [*prompt, *response]


def _prompt_length(example: MaskedTokens) -> int:
    """Tokens before the response: up to its first masked token."""
    mask = example.assistant_mask
    return mask.index(1) if 1 in mask else len(mask)


def tokenize_preference(
    tokenizer,
    prompt,
    chosen,
    rejected,
    max_length: int | None = None,
    empty_system=False,
    max_prompt_length: int | None = None,
    where: str = "a record",
) -> PreferencePair:
    """A DPO pair; the masks cover only each conversation's last message, the response, as
    alignment-handbook splits a DPO record (earlier assistant turns are prompt).

    Over `max_length`, without `max_prompt_length` each sequence is cut from the right. With it,
    as TRL's DPOTrainer of MambaInLlama's and alignment-handbook's recipes (0.8, truncation_mode
    "keep_end") does: where the prompt plus the longer response exceeds `max_length`, the prompt
    keeps its last `max_prompt_length` tokens; if that is still too long, each response keeps its
    first `max_length - max_prompt_length`. Each of prompt, chosen and rejected is text or
    messages; anything else is a DatasetError naming `where`."""
    for name, value in (("prompt", prompt), ("chosen", chosen), ("rejected", rejected)):
        _check_messages(value, where, name, text=True)
    pair = []
    for response in (chosen, rejected):
        messages = _as_messages(prompt, response)  # all but the last message is the prompt
        pair.append(
            tokenize_chat(tokenizer, messages, None, empty_system, len(messages) - 1, where)
        )
    if max_length is None:
        return PreferencePair(*pair)
    if max_prompt_length is None:
        return PreferencePair(
            *(MaskedTokens(e.input_ids[:max_length], e.assistant_mask[:max_length]) for e in pair)
        )
    prompts = [_prompt_length(e) for e in pair]
    longer = max(len(e.input_ids) - p for e, p in zip(pair, prompts, strict=True))
    kept = []
    for example, prompt in zip(pair, prompts, strict=True):
        start, end = 0, len(example.input_ids)
        if prompt + longer > max_length:  # the prompt keeps its end
            start = max(0, prompt - max_prompt_length)
        if prompt - start + longer > max_length:  # still too long: the responses their start
            end = min(end, prompt + max_length - max_prompt_length)
        kept.append(MaskedTokens(example.input_ids[start:end], example.assistant_mask[start:end]))
    return PreferencePair(*kept)


def read_jsonl(path: str | Path, required: tuple[str, ...]) -> Iterator[tuple[str, dict]]:
    """Records of a jsonl file, each checked for the `required` keys, with where they are
    ("path:line", for later faults); faults are DatasetErrors, which the trainer reports as one
    line naming the file and line."""
    with open(path, encoding="utf-8") as f:
        try:
            for number, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as error:
                    raise DatasetError(
                        f"{path}:{number} is not valid JSON (expected jsonl: one JSON object a "
                        "line; convert a Hugging Face dataset with its to_json)"
                    ) from error
                if not isinstance(record, dict):
                    raise DatasetError(
                        f"{path}:{number} is a JSON {_json_type(record)}; expected an object "
                        f"with {', '.join(required)}"
                    )
                missing = [key for key in required if key not in record]
                if missing:
                    raise DatasetError(f"{path}:{number} lacks {', '.join(missing)}")
                yield f"{path}:{number}", record
        except UnicodeDecodeError as error:
            # decoding runs ahead of the lines read, so no line number
            raise DatasetError(
                f"{path} is not UTF-8 text: {error} (expected jsonl: one JSON object a line; "
                "convert a Hugging Face dataset, e.g. parquet, with its to_json)"
            ) from error


def pad_batch(
    examples: list[MaskedTokens], pad_id: int, length: int | None = None
) -> dict[str, torch.Tensor]:
    """Right-padded [B, L] tokens (L: `length`, or the longest example), the loss mask of each
    next-token target, and the padding mask.

    `loss_mask[b, t]` weights the prediction of tokens[b, t + 1] from position t, so it is the
    assistant mask shifted by one; the last column is always 0.
    """
    length = length or max(len(e.input_ids) for e in examples)
    tokens = torch.full((len(examples), length), pad_id, dtype=torch.long)
    loss_mask = torch.zeros(len(examples), length, dtype=torch.float32)
    attention = torch.zeros(len(examples), length, dtype=torch.bool)
    for row, example in enumerate(examples):
        n = len(example.input_ids)
        tokens[row, :n] = torch.tensor(example.input_ids)
        attention[row, :n] = True
        loss_mask[row, : n - 1] = torch.tensor(example.assistant_mask[1:], dtype=torch.float32)
    return {"tokens": tokens, "loss_mask": loss_mask, "attention_mask": attention}
