"""Data-pipeline review: the Pile's shard set, and data faults that reach the trainer as one
`error:` line (DatasetError) rather than a traceback."""

import json

import numpy as np
import pytest

from data_tools import merge_pythia_shards, preprocess_data
from megatron_mamba.data.chat import read_jsonl, tokenize_chat
from megatron_mamba.data.chat_dataset import ChatDataset, PreferenceDataset
from megatron_mamba.data.corpus import CorpusSamples, HFTokenizerInfo, parse_blend
from megatron_mamba.data.indexed import DatasetError
from megatron_mamba.data.merge import merge_shards
from megatron_mamba.data.preprocess import load_tokenizer
from megatron_mamba.data.pythia import DataOrder
from tests.helpers.tiny_tokenizer import make_tokenizer
from tests.unit.test_data import build_pair


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    return make_tokenizer(tmp_path_factory.mktemp("tokenizer"))


@pytest.fixture
def pile_shards(tmp_path):
    """A Pile-like index and its .bin cut into three equal shards named as EleutherAI names
    them: the number after "of" is the last shard's (the real Pile: 00000 … 00020)."""
    prefix = build_pair(tmp_path / "full", [np.full(2049, i) for i in range(6)])
    whole = (tmp_path / "full.bin").read_bytes()
    cut = len(whole) // 3
    shards = []
    for i in range(3):
        shards.append(tmp_path / f"document-{i:05}-of-00002.bin")
        shards[-1].write_bytes(whole[i * cut : (i + 1) * cut])
    return shards, tmp_path / "full.idx", whole, prefix


def test_the_whole_shard_set_in_order_merges(tmp_path, pile_shards):
    shards, index, whole, _ = pile_shards
    assert merge_shards(shards, index, tmp_path / "merged").sequences == 6
    assert (tmp_path / "merged.bin").read_bytes() == whole


def test_shards_out_of_order_are_refused_not_merged(tmp_path, pile_shards, capsys):
    """Equal-sized shards pass the size check in any order; the result would silently scramble
    Pythia's training order."""
    shards, index, _, _ = pile_shards
    swapped = [shards[1], shards[0], shards[2]]
    with pytest.raises(DatasetError, match="00001, 00000, 00002 of .*document-\\*-of-00002.bin"):
        merge_shards(swapped, index, tmp_path / "merged")
    assert not list(tmp_path.glob("merged*"))
    argv = ["--shards", *map(str, swapped), "--index", str(index), "--output-prefix", "x"]
    assert merge_pythia_shards.main(argv) == 1
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and "repeated or out of order" in err[0]


def test_a_missing_last_shard_is_named(tmp_path, pile_shards):
    """The docs once said twenty shards (…-00019-of-00020): the last one, 00020, was left out."""
    shards, index, _, _ = pile_shards
    with pytest.raises(DatasetError, match=r"not the set 00000 … 00002 in order \(missing 00002\)"):
        merge_shards(shards[:2], index, tmp_path / "merged")


def test_the_documented_merge_command_names_every_shard():
    """docs/data.md's brace range must reach the last shard named after "of"."""
    import re
    from pathlib import Path

    docs = (Path(__file__).parents[2] / "docs" / "data.md").read_text()
    ranges = re.findall(r"-000\{(\d\d)\.\.(\d\d)\}-of-000(\d\d)\.bin", docs)
    assert ranges
    for first, last, of in ranges:
        assert (first, last) == ("00", of)


@pytest.mark.parametrize(
    "line, match",
    [
        ("5", r"c.jsonl:2 is a JSON int; expected an object with messages"),
        ('"messages"', r"c.jsonl:2 is a JSON str; expected an object"),
        ("[1, 2]", r"c.jsonl:2 is a JSON list"),
        ("{not json", r"c.jsonl:2 is not valid JSON"),
        ('{"other": 1}', r"c.jsonl:2 lacks messages"),
    ],
)
def test_chat_records_that_are_not_objects_are_dataset_errors(tmp_path, line, match):
    path = tmp_path / "c.jsonl"
    path.write_text(json.dumps({"messages": []}) + "\n" + line + "\n")
    with pytest.raises(DatasetError, match=match):
        list(read_jsonl(path, ("messages",)))


def test_a_chat_file_that_is_not_utf8_is_named(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_bytes(b'{"messages": []}\n{"messages": "\xff\xfe"}\n')
    expected = r"c.jsonl is not UTF-8 text.*expected jsonl: one JSON object a line"
    with pytest.raises(DatasetError, match=expected):
        list(read_jsonl(path, ("messages",)))


def test_an_unusable_chat_template_is_a_dataset_error(tokenizer_dir):
    odd = load_tokenizer(tokenizer_dir)
    odd.chat_template = "{% for m in messages|reverse %}{{ m['content'] }}{% endfor %}"
    conversation = [
        {"role": "user", "content": "Name a colour."},
        {"role": "assistant", "content": "Blue."},
        {"role": "user", "content": "Another?"},
        {"role": "assistant", "content": "Green."},
    ]
    with pytest.raises(DatasetError, match="not render a conversation as a prefix"):
        tokenize_chat(odd, conversation)


@pytest.mark.parametrize("spec", ["0 a 1 b", "-0.5 a 1.5 b", "nan a 1 b", "inf a 1 b"])
def test_blend_weights_must_be_positive(spec):
    """megatron-core asserts, with no message, on a weight that is not positive."""
    weight = spec.split()[0]
    with pytest.raises(DatasetError, match=f"weight {weight} must be a positive number"):
        parse_blend(spec)


def test_corpus_configuration_faults_are_dataset_errors():
    with pytest.raises(DatasetError, match="set train.max_train_samples"):
        CorpusSamples("0.5 a 0.5 b", HFTokenizerInfo(300, 2), 17, seed=0)
    with pytest.raises(DatasetError, match="not a list of weight prefix pairs"):
        parse_blend("0.7 a 0.3")


def test_data_errors_end_the_training_cli_in_one_line(tmp_path, capsys, monkeypatch):
    """What the user sees: train.py reports DatasetErrors as one line and exit 1."""
    import megatron_mamba.runtime
    from megatron_mamba.train import main
    from megatron_mamba.training import trainer

    path = tmp_path / "chat.jsonl"
    path.write_text("5\n")
    monkeypatch.setattr(megatron_mamba.runtime, "shutdown_runtime", lambda: None)
    monkeypatch.setattr(trainer, "train", lambda run: list(read_jsonl(path, ("messages",))))
    assert main(["preset=tiny-llama"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: {path}:1 is a JSON int; expected an object with messages"]


def test_a_directory_that_is_no_tokenizer_is_one_error_line(tmp_path, capsys):
    empty = tmp_path / "not_a_tokenizer"
    empty.mkdir()
    with pytest.raises(DatasetError, match="not_a_tokenizer is not a tokenizer directory"):
        load_tokenizer(empty)
    source = tmp_path / "in.txt"
    source.write_text("hello\n")
    argv = ["--input", str(source), "--tokenizer", str(empty), "--output-prefix", "out"]
    assert preprocess_data.main(argv) == 1
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {empty} is not a tokenizer directory")


def _jsonl(path, records):
    """Records one a line, after a blank line (so that line numbers differ from record numbers)."""
    path.write_text("\n" + "".join(json.dumps(r) + "\n" for r in records))
    return path


CHAT = [{"role": "user", "content": "Name a colour."}, {"role": "assistant", "content": "Blue."}]


@pytest.mark.parametrize(
    "messages, match",
    [
        ("Name a colour.", r"c.jsonl:3: messages is a JSON str; expected a list of \{\"role\""),
        ({"role": "user"}, r"c.jsonl:3: messages is a JSON dict"),
        ([], r"c.jsonl:3: messages is an empty list"),
        ([CHAT[0], "Blue."], r"c.jsonl:3: messages\[1\] is a JSON str; expected an object"),
        ([CHAT[0], {"role": "assistant"}], r"c.jsonl:3: messages\[1\] lacks content"),
        ([{"content": "Hi."}], r"c.jsonl:3: messages\[0\] lacks role"),
        (
            [CHAT[0], {"role": "assistant", "content": None}],
            r"messages\[1\].content is a JSON null",
        ),
        ([{"role": "user", "content": ["a"]}], r"messages\[0\].content is a JSON list; expected a"),
    ],
)
def test_malformed_chat_messages_name_the_file_and_line(tmp_path, tokenizer_dir, messages, match):
    """They failed inside the chat template (a TypeError, jinja's UndefinedError) or its
    ValueError on an empty conversation: tracebacks naming no record."""
    path = _jsonl(tmp_path / "c.jsonl", [{"messages": CHAT}, {"messages": messages}])
    with pytest.raises(DatasetError, match=match):
        ChatDataset(path, tokenizer_dir, 32)


@pytest.mark.parametrize(
    "record, match",
    [
        ({"prompt": 5}, r"p.jsonl:3: prompt is a JSON int; expected text or a list"),
        ({"chosen": None}, r"p.jsonl:3: chosen is a JSON null; expected text or a list"),
        ({"rejected": {"role": "assistant"}}, r"p.jsonl:3: rejected is a JSON dict"),
        ({"chosen": [*CHAT[:1], {"role": "assistant"}]}, r"p.jsonl:3: chosen\[1\] lacks content"),
        ({"prompt": [{"role": "user", "content": 1}]}, r"p.jsonl:3: prompt\[0\].content is a JSON"),
    ],
)
def test_malformed_preference_records_name_the_file_and_line(
    tmp_path, tokenizer_dir, record, match
):
    """chosen and rejected (and the prompt) are text or conversations; anything else failed
    inside the chat template or _as_messages with a traceback."""
    good = {"prompt": "Name a colour.", "chosen": "Blue.", "rejected": "No."}
    path = _jsonl(tmp_path / "p.jsonl", [good, {**good, **record}])
    with pytest.raises(DatasetError, match=match):
        PreferenceDataset(path, tokenizer_dir, 32)


def test_chat_data_that_trains_nothing_is_a_dataset_error(tmp_path, tokenizer_dir):
    """These were plain ValueErrors, which the trainer shows as a traceback."""
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(DatasetError, match="empty.jsonl holds no records"):
        ChatDataset(empty, tokenizer_dir, 32)
    questions = _jsonl(tmp_path / "q.jsonl", [{"messages": CHAT[:1]}] * 12)
    with pytest.raises(DatasetError, match="no target of .*q.jsonl carries loss"):
        ChatDataset(questions, tokenizer_dir, 8, pack=True)
    no_eos = load_tokenizer(tokenizer_dir)
    no_eos.eos_token = None
    no_eos.chat_template = (
        "{% for m in messages %}{{ m['role'] + ': ' + m['content'] }}{% endfor %}"
    )
    no_eos.save_pretrained(tmp_path / "no_eos")
    chats = _jsonl(tmp_path / "c.jsonl", [{"messages": CHAT}])
    with pytest.raises(DatasetError, match="data.pack joins chats with EOS; .*no_eos has none"):
        ChatDataset(chats, tmp_path / "no_eos", 8, pack=True)


@pytest.mark.parametrize(
    "records, message",
    [
        ([{"messages": [CHAT[0], {"role": "assistant"}]}], "{path}:2: messages[1] lacks content"),
        ([], "{path} holds no records"),
    ],
)
def test_chat_data_faults_end_the_training_cli_in_one_line(
    tmp_path, tokenizer_dir, capsys, monkeypatch, records, message
):
    """Through the config and the trainer's data loading, as a user meets them."""
    import megatron_mamba.runtime
    from megatron_mamba.train import main
    from megatron_mamba.training import trainer

    path = _jsonl(tmp_path / "chat.jsonl", records)
    monkeypatch.setattr(megatron_mamba.runtime, "shutdown_runtime", lambda: None)
    monkeypatch.setattr(trainer, "train", lambda run: trainer._training_data(run, None))
    argv = ["preset=tiny-llama", "data.kind=chat", f"data.path={path}"]
    assert main([*argv, f"data.tokenizer={tokenizer_dir}", "data.item_length=32"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: " + message.format(path=path)]


@pytest.mark.parametrize(
    "override", ["data.first_item=-1", "train.max_train_samples=0", "train.num_train_epochs=0"]
)
def test_data_order_values_a_user_sets_are_refused_by_the_config(override, capsys):
    """DataOrder's own ValueErrors are for callers' bugs: the values a user can set are refused
    first, in one line (exit 2), and data too short for them is a TrainingError (one line)."""
    from megatron_mamba.train import main
    from megatron_mamba.training.config import TrainConfig
    from megatron_mamba.training.trainer import TrainingError, _total_steps

    assert main(["preset=tiny-llama", override]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and override.split(".")[1] in err[0]
    with pytest.raises(TrainingError, match="no training step fits: 0 items from item 10 of 6"):
        _total_steps(TrainConfig(), DataOrder(4, first_item=10), 6)
    short = "no training step fits: 3 items \\(train.max_train_samples=3\\) from item 0 of 6"
    with pytest.raises(TrainingError, match=short):
        _total_steps(TrainConfig(max_train_samples=3), DataOrder(4, max_train_samples=3), 6)
