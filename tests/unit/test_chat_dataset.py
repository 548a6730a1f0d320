"""Chat and preference datasets: fixed-length rows whose loss mask covers the assistant tokens,
read in a seeded per-epoch order that a resumed run reproduces."""

import json

import numpy as np
import pytest
import torch

from megatron_mamba.config_io import ConfigError, load
from megatron_mamba.data.chat import tokenize_chat
from megatron_mamba.data.chat_dataset import ChatDataset, PreferenceDataset
from megatron_mamba.data.indexed import DatasetError
from megatron_mamba.data.preprocess import load_tokenizer
from megatron_mamba.data.pythia import DataOrder
from megatron_mamba.training.run_config import RunConfig
from tests.helpers.tiny_tokenizer import make_tokenizer

ITEM = 48


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    return make_tokenizer(tmp_path_factory.mktemp("tok"))


def _write(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def _chats(path, count=6):
    return _write(
        path,
        [
            {
                "messages": [
                    {"role": "user", "content": f"Count to {i}."},
                    {"role": "assistant", "content": " ".join(str(k) for k in range(i + 1))},
                ]
            }
            for i in range(count)
        ],
    )


def test_rows_are_padded_and_masked_on_assistant_targets(tmp_path, tokenizer_dir):
    data = ChatDataset(_chats(tmp_path / "chat.jsonl"), tokenizer_dir, ITEM, shuffle=False)
    tokenizer = load_tokenizer(tokenizer_dir)
    assert data.data.tokens.shape == (6, ITEM) and data.data.loss_mask.shape == (6, ITEM - 1)
    row = data.rows(torch.tensor([3]))
    targets = row.labels[0][row.loss_mask[0].bool()]
    assert tokenizer.decode(targets) == "0 1 2 3<eos>\n"
    length = len(
        tokenizer.apply_chat_template(
            [
                {"role": "user", "content": "Count to 3."},
                {"role": "assistant", "content": "0 1 2 3"},
            ],
            tokenize=True,
        )["input_ids"]
    )
    assert (row.tokens[0, length:] == tokenizer.pad_token_id).all()
    assert row.loss_mask[0, length - 1 :].sum() == 0


def test_order_is_seeded_per_epoch_and_resumes(tmp_path, tokenizer_dir):
    data = ChatDataset(_chats(tmp_path / "chat.jsonl"), tokenizer_dir, ITEM, seed=3)
    order = DataOrder(global_batch=2, epochs=2)
    firsts = [b.loss_mask.sum(-1).tolist() for b in data.batches(order, 0)]
    assert len(firsts) == 6
    epoch1, epoch2 = sum(firsts[:3], []), sum(firsts[3:], [])
    assert sorted(epoch1) == sorted(epoch2) and epoch1 != epoch2
    resumed = [b.loss_mask.sum(-1).tolist() for b in data.batches(order, 0, start_step=4)]
    assert resumed == firsts[4:]
    again = ChatDataset(_chats(tmp_path / "chat.jsonl"), tokenizer_dir, ITEM, seed=3)
    assert [b.loss_mask.sum(-1).tolist() for b in again.batches(order, 0)] == firsts


@pytest.mark.parametrize("first_item", [0, 3])
def test_epochs_shuffle_the_same_max_train_samples(tmp_path, tokenizer_dir, first_item):
    """max_train_samples picks the same 4 records for every epoch (the first 4 from first_item),
    each epoch in a new order."""
    data = ChatDataset(_chats(tmp_path / "chat.jsonl", count=12), tokenizer_dir, ITEM, seed=1)
    order = DataOrder(global_batch=2, first_item=first_item, max_train_samples=4, epochs=3)
    index = {tuple(row.tolist()): i for i, row in enumerate(data.data.tokens)}
    read = [index[tuple(row.tolist())] for b in data.batches(order, 0) for row in b.tokens]
    epochs = [read[:4], read[4:8], read[8:]]
    chosen = list(range(first_item, first_item + 4))
    assert all(sorted(epoch) == chosen for epoch in epochs)
    assert len({tuple(epoch) for epoch in epochs}) > 1


def test_preference_pairs_share_their_prompt(tmp_path, tokenizer_dir):
    path = _write(
        tmp_path / "prefs.jsonl",
        [
            {"prompt": f"Say {word}.", "chosen": f"{word}.", "rejected": "No."}
            for word in ("red", "green", "blue", "amber")
        ],
    )
    data = PreferenceDataset(path, tokenizer_dir, ITEM, seed=0)
    tokenizer = load_tokenizer(tokenizer_dir)
    (batch,) = list(data.batches(DataOrder(global_batch=4), 0))
    for i in range(4):
        chosen = tokenizer.decode(batch.chosen.labels[i][batch.chosen.loss_mask[i].bool()])
        rejected = tokenizer.decode(batch.rejected.labels[i][batch.rejected.loss_mask[i].bool()])
        text = tokenizer.decode(batch.chosen.tokens[i])
        word = chosen.removesuffix(".<eos>\n")
        assert rejected == "No.<eos>\n" and f"Say {word}." in text
    halves = batch.split(2)
    assert len(halves) == 2 and torch.equal(halves[1].rejected.tokens, batch.rejected.tokens[2:])


def test_bad_inputs_fail_clearly(tmp_path, tokenizer_dir):
    with pytest.raises(FileNotFoundError, match="missing.jsonl does not exist"):
        ChatDataset(tmp_path / "missing.jsonl", tokenizer_dir, ITEM)
    _write(tmp_path / "bad.jsonl", [{"text": "no messages"}])
    with pytest.raises(ValueError, match="bad.jsonl:1 lacks messages"):
        ChatDataset(tmp_path / "bad.jsonl", tokenizer_dir, ITEM)
    with pytest.raises(DatasetError, match="no record .* has an assistant token within"):
        ChatDataset(_chats(tmp_path / "chat.jsonl"), tokenizer_dir, 4)
    with pytest.raises(ConfigError, match="data.kind=chat needs data.tokenizer"):
        load(RunConfig, None, ["preset=tiny-llama", "data.kind=chat", "data.path=x.jsonl"])
    with pytest.raises(ConfigError, match="needs a reference model"):
        load(
            RunConfig,
            None,
            ["preset=tiny-llama", "data.kind=preference", "data.tokenizer=t", "data.path=p"],
        )


def test_token_ids_outside_the_models_vocabulary_are_refused(tmp_path, tokenizer_dir):
    """A tokenizer larger than the model's vocabulary would index past the embedding."""
    chats = _chats(tmp_path / "chat.jsonl")
    largest = int(ChatDataset(chats, tokenizer_dir, ITEM).data.tokens.max())
    ChatDataset(chats, tokenizer_dir, ITEM, vocab_size=largest + 1)
    with pytest.raises(
        DatasetError, match=f"chat.jsonl tokenizes to id {largest}, outside .* {largest}"
    ):
        ChatDataset(chats, tokenizer_dir, ITEM, vocab_size=largest)
    prefs = _write(
        tmp_path / "p.jsonl", [{"prompt": "Say red.", "chosen": "red.", "rejected": "No."}]
    )
    with pytest.raises(DatasetError, match="p.jsonl tokenizes to id"):
        PreferenceDataset(prefs, tokenizer_dir, ITEM, vocab_size=10)


def test_preference_data_truncates_prompts_from_the_left_with_max_prompt_length(
    tmp_path, tokenizer_dir
):
    prompt = "Count to " + " ".join(str(k) for k in range(30)) + "."
    path = _write(tmp_path / "p.jsonl", [{"prompt": prompt, "chosen": "1 2.", "rejected": "No."}])
    data = PreferenceDataset(path, tokenizer_dir, ITEM, max_prompt_length=20, shuffle=False)
    tokenizer = load_tokenizer(tokenizer_dir)
    row = data.chosen.tokens[0][data.chosen.tokens[0] != tokenizer.pad_token_id]
    text = tokenizer.decode(row)
    assert text.endswith("29.<eos>\n<|assistant|>\n1 2.<eos>\n") and "Count to" not in text
    for bad, why in [
        (["data.max_prompt_length=48"], "must be positive and below item_length=48"),
        (["data.kind=chat", "data.max_prompt_length=8"], "applies to preference data only"),
    ]:
        with pytest.raises(ConfigError, match=why):
            load(
                RunConfig,
                None,
                [
                    "preset=tiny-llama",
                    "data.kind=preference",
                    "data.tokenizer=t",
                    "data.path=p",
                    "data.item_length=48",
                    *bad,
                ],
            )


@pytest.mark.parametrize("train_on", ["assistant", "all"])
def test_packed_rows_cut_the_joined_conversations(tmp_path, tokenizer_dir, train_on):
    """pack: every conversation as tokenized and followed by EOS (TRL's ConstantLengthDataset
    appends its concat token, EOS, to each text), in the seeded order, joined and cut into full
    rows (the remainder dropped); the mask travels with its tokens, shifted onto the targets."""
    path = _chats(tmp_path / "chat.jsonl", count=12)
    data = ChatDataset(path, tokenizer_dir, ITEM, seed=5, pack=True, train_on=train_on)
    tokenizer = load_tokenizer(tokenizer_dir)
    records = [json.loads(line)["messages"] for line in path.read_text().splitlines()]
    examples = [
        tokenize_chat(tokenizer, records[i]) for i in np.random.default_rng(5).permutation(12)
    ]
    stream = [t for e in examples for t in [*e.input_ids, tokenizer.eos_token_id]]
    mask = [m for e in examples for m in [*e.assistant_mask, 0]]
    rows = len(stream) // ITEM
    assert rows >= 3 and len(data) == rows
    assert data.data.tokens.flatten().tolist() == stream[: rows * ITEM]
    expected = torch.tensor(mask[: rows * ITEM], dtype=torch.float32).view(rows, ITEM)[:, 1:]
    if train_on == "all":
        expected = torch.ones_like(expected)
    assert torch.equal(data.data.loss_mask, expected)
    unpacked = ChatDataset(path, tokenizer_dir, ITEM, seed=5, train_on=train_on)
    pad = unpacked.data.tokens[:, 1:] == tokenizer.pad_token_id
    assert (unpacked.data.loss_mask[pad] == 0).all()
    if train_on == "all":
        assert (unpacked.data.loss_mask[~pad] == 1).all()


def test_train_on_all_needs_no_assistant_token_within_item_length(tmp_path, tokenizer_dir):
    """Every record cut before its assistant turn still trains on all its tokens."""
    data = ChatDataset(_chats(tmp_path / "chat.jsonl"), tokenizer_dir, 4, train_on="all")
    assert data.data.loss_mask.shape == (6, 3) and data.data.loss_mask.all()


def test_packing_needs_a_full_row_and_chat_data(tmp_path, tokenizer_dir):
    with pytest.raises(DatasetError, match="less than one packed row of item_length=100000"):
        ChatDataset(_chats(tmp_path / "chat.jsonl"), tokenizer_dir, 100000, pack=True)
    for bad in (["data.pack=true"], ["data.train_on=all"]):
        with pytest.raises(ConfigError, match="apply to chat data only"):
            load(
                RunConfig, None, ["preset=tiny-llama", "data.kind=corpus", "data.tokenizer=t", *bad]
            )
