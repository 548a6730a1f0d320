"""Stand-in inputs for the Zephyr examples, under OUT_DIR: a tiny random Mistral (8 layers, the
shape family of Zephyr-7B-beta) saved as a transformers directory with a toy tokenizer, and
chat (pseudo-label / SFT) and preference jsonl files made from the quickstart corpus.

    python examples/zephyr/make_tiny.py OUT_DIR
"""

import json
import random
import sys
from pathlib import Path

import torch
from transformers import MistralConfig, MistralForCausalLM

from megatron_mamba.data.toy_tokenizer import train_toy_tokenizer

CORPUS = Path(__file__).resolve().parents[1] / "quickstart" / "corpus.txt"


def _conversations(sentences: list[str]) -> list[tuple[str, str]]:
    """(prompt, answer): continue the first half of a sentence with its second half."""
    out = []
    for sentence in sentences:
        words = sentence.split()
        half = len(words) // 2
        out.append((f"Continue: {' '.join(words[:half])}", " ".join(words[half:])))
    return out


def _write(path: Path, records: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


def main(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    sentences = [s for s in CORPUS.read_text().splitlines() if s.strip()]
    pairs = _conversations(sentences)
    chats = [
        {"messages": [{"role": "user", "content": p}, {"role": "assistant", "content": a}]}
        for p, a in pairs
    ]
    _write(out / "chat.jsonl", chats * 8)
    half = len(chats) * 4  # chat.jsonl again as two pseudo-label sources, as MambaInLlama has
    _write(out / "labels_a.jsonl", (chats * 8)[:half])
    _write(out / "labels_b.jsonl", (chats * 8)[half:])
    rng = random.Random(0)
    preferences = []
    for i, (prompt, answer) in enumerate(pairs * 4):
        other = pairs[(i + rng.randrange(1, len(pairs))) % len(pairs)][1]
        preferences.append({"prompt": prompt, "chosen": answer, "rejected": other})
    _write(out / "prefs.jsonl", preferences)

    tokenizer_lines = sentences + [p for p, _ in pairs]
    tokenizer = train_toy_tokenizer(tokenizer_lines, out / "zephyr-hf", vocab_size=384)
    torch.manual_seed(0)
    config = MistralConfig(
        vocab_size=384,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=8,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        sliding_window=None,
        pad_token_id=1,
        eos_token_id=2,
        bos_token_id=None,
    )
    MistralForCausalLM(config).save_pretrained(tokenizer)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
