"""A small byte-level BPE tokenizer trained on local text and saved as a transformers tokenizer
directory with Zephyr's chat template: the stand-in for a real model's tokenizer in the tiny
examples, the quickstart and the tests (nothing is downloaded)."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

# HuggingFaceH4/zephyr-7b-beta's template (alignment-handbook's Zephyr recipes).
ZEPHYR_TEMPLATE = (
    "{% for message in messages %}\n{% if message['role'] == 'user' %}\n"
    "{{ '<|user|>\n' + message['content'] + eos_token }}\n"
    "{% elif message['role'] == 'system' %}\n"
    "{{ '<|system|>\n' + message['content'] + eos_token }}\n"
    "{% elif message['role'] == 'assistant' %}\n"
    "{{ '<|assistant|>\n'  + message['content'] + eos_token }}\n{% endif %}\n"
    "{% if loop.last and add_generation_prompt %}\n{{ '<|assistant|>' }}\n{% endif %}\n"
    "{% endfor %}"
)
SPECIAL_TOKENS = ("<unk>", "<pad>", "<eos>", "<|system|>", "<|user|>", "<|assistant|>")


def train_toy_tokenizer(lines: Iterable[str], directory: str | Path, vocab_size: int = 300) -> Path:
    """Train on `lines` and save to `directory` (unk, pad and eos are ids 0, 1 and 2)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tokenizer.train_from_iterator(lines, trainer)
    hf = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, unk_token="<unk>", pad_token="<pad>", eos_token="<eos>"
    )
    hf.chat_template = ZEPHYR_TEMPLATE
    hf.save_pretrained(directory)
    return Path(directory)
