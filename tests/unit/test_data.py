"""Indexed-dataset checks, preprocessing round trips, Pythia's order, DP sharding and resume."""

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

from megatron_mamba.data.indexed import DatasetError, check_pair, open_indexed
from megatron_mamba.data.merge import merge_shards
from megatron_mamba.data.preprocess import load_tokenizer, preprocess
from megatron_mamba.data.pythia import DataOrder, PythiaPreshuffled
from tests.helpers.tiny_tokenizer import corpus_lines, make_tokenizer


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    return make_tokenizer(tmp_path_factory.mktemp("tokenizer"))


def write_jsonl(path, docs):
    path.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    return path


@pytest.mark.parametrize("workers", [1, 2])
def test_preprocess_round_trip(tmp_path, tokenizer_dir, workers):
    docs = corpus_lines()[:40]
    prefix = tmp_path / "corpus"
    stats = preprocess(
        [write_jsonl(tmp_path / "in.jsonl", docs)],
        tokenizer_dir,
        prefix,
        workers=workers,
        batch_documents=7,
        progress=False,
    )
    tok = load_tokenizer(tokenizer_dir)
    expected = [tok(d, add_special_tokens=False)["input_ids"] + [tok.eos_token_id] for d in docs]
    dataset, summary = open_indexed(prefix, vocab_size=len(tok))
    assert summary.dtype == np.uint16 and summary.documents == len(docs) == stats.documents
    assert [dataset[i].tolist() for i in range(len(dataset))] == expected
    assert summary.tokens == stats.tokens == sum(map(len, expected))
    assert sorted(os.listdir(tmp_path)) == ["corpus.bin", "corpus.idx", "in.jsonl"]


def test_failed_preprocess_leaves_no_files(tmp_path, tokenizer_dir):
    source = write_jsonl(tmp_path / "in.jsonl", corpus_lines()[:5])
    with open(source, "a") as f:
        f.write("{not json\n")
    with pytest.raises(ValueError, match=r"in.jsonl:6 is not a JSON object"):
        preprocess([source], tokenizer_dir, tmp_path / "out", progress=False)
    assert sorted(os.listdir(tmp_path)) == ["in.jsonl"]


def test_a_non_string_text_is_refused_naming_file_and_line(tmp_path, tokenizer_dir):
    source = write_jsonl(tmp_path / "in.jsonl", corpus_lines()[:2])
    with open(source, "a") as f:
        f.write('{"text": 5}\n')
    with pytest.raises(ValueError, match=r"in.jsonl:3 has 'text' of type int; expected a string"):
        preprocess([source], tokenizer_dir, tmp_path / "out", progress=False)
    assert sorted(os.listdir(tmp_path)) == ["in.jsonl"]


def test_an_existing_pair_is_replaced_only_with_overwrite(tmp_path, tokenizer_dir):
    source = write_jsonl(tmp_path / "in.jsonl", corpus_lines()[:3])
    preprocess([source], tokenizer_dir, tmp_path / "out", progress=False)
    first = (tmp_path / "out.bin").read_bytes()
    source = write_jsonl(tmp_path / "in.jsonl", corpus_lines()[3:5])
    with pytest.raises(
        FileExistsError, match="out.bin and .*out.idx already exist; pass --overwrite"
    ):
        preprocess([source], tokenizer_dir, tmp_path / "out", progress=False)
    assert (tmp_path / "out.bin").read_bytes() == first
    (tmp_path / "out.idx").unlink()  # a lone .bin (an interrupted replacement) is refused too
    with pytest.raises(FileExistsError, match="out.bin already exists"):
        preprocess([source], tokenizer_dir, tmp_path / "out", progress=False)
    stats = preprocess([source], tokenizer_dir, tmp_path / "out", progress=False, overwrite=True)
    assert check_pair(tmp_path / "out").documents == stats.documents == 2
    assert sorted(os.listdir(tmp_path)) == ["in.jsonl", "out.bin", "out.idx"]


def test_a_replacement_never_pairs_a_bin_with_the_old_index(tmp_path, monkeypatch):
    """Interrupted between its renames, a replacement leaves a .bin without an index (refused),
    not the new .bin described by the old .idx."""
    from megatron_mamba.data.merge import merge_datasets

    a = build_pair(tmp_path / "a", [np.arange(3)])
    b = build_pair(tmp_path / "b", [np.arange(5), np.arange(4)])
    merge_datasets([a], tmp_path / "out")
    replace = os.replace

    def interrupted(src, dst):
        if str(dst).endswith("out.idx"):
            raise OSError("interrupted")
        replace(src, dst)

    monkeypatch.setattr(os, "replace", interrupted)
    with pytest.raises(OSError, match="interrupted"):
        merge_datasets([a, b], tmp_path / "out", overwrite=True)
    with pytest.raises(DatasetError, match="index file .*out.idx does not exist"):
        check_pair(tmp_path / "out")
    assert not list(tmp_path.glob("*tmp*"))


def build_pair(prefix, items, dtype=np.uint16):
    builder = IndexedDatasetBuilder(f"{prefix}.bin", dtype=dtype)
    for item in items:
        builder.add_document(np.asarray(item, dtype=dtype), [len(item)])
    builder.finalize(f"{prefix}.idx")
    return prefix


@pytest.fixture
def small_pair(tmp_path):
    rng = np.random.default_rng(0)
    return build_pair(tmp_path / "small", [rng.integers(0, 100, n) for n in (5, 9, 3, 7)])


def test_a_sound_pair_passes(small_pair):
    summary = check_pair(small_pair, vocab_size=100)
    assert (summary.sequences, summary.documents, summary.tokens) == (4, 4, 24)
    assert summary.max_token <= 99


@pytest.mark.parametrize(
    "damage,match",
    [
        ("header", "is not a Megatron index"),
        ("version", "index version 2"),
        ("dtype", "token dtype code 9"),
        ("truncate_idx", "is .* bytes but its header"),
        ("truncate_bin", "holds 20 tokens but .* describes 24"),
        ("odd_bin", "not a whole number of uint16 tokens"),
        ("missing_bin", "does not exist"),
        ("vocab", "token id .* outside the model's vocabulary of 10"),
    ],
)
def test_damaged_pairs_are_refused(small_pair, damage, match):
    idx, bin_ = Path(f"{small_pair}.idx"), f"{small_pair}.bin"
    raw = bytearray(idx.read_bytes())
    vocab = 100
    if damage == "header":
        raw[0:3] = b"XYZ"
    elif damage == "version":
        raw[9] = 2
    elif damage == "dtype":
        raw[17] = 9
    elif damage == "truncate_idx":
        raw = raw[:-8]
    elif damage == "truncate_bin":
        os.truncate(bin_, 40)
    elif damage == "odd_bin":
        os.truncate(bin_, 47)
    elif damage == "missing_bin":
        os.remove(bin_)
    elif damage == "vocab":
        vocab = 10
    idx.write_bytes(bytes(raw))
    with pytest.raises(DatasetError, match=match):
        check_pair(small_pair, vocab_size=vocab)


def test_a_bin_from_another_index_is_refused(tmp_path, small_pair):
    other = build_pair(tmp_path / "other", [np.arange(30)])
    os.replace(f"{other}.bin", f"{small_pair}.bin")
    with pytest.raises(DatasetError, match="holds 30 tokens but .* describes 24"):
        check_pair(small_pair)


ITEM = 2049


@pytest.fixture
def pythia_pair(tmp_path):
    """20 items of 2049 tokens; item i starts with token i (its identity)."""
    rng = np.random.default_rng(1)
    items = [np.concatenate([[i], rng.integers(0, 50000, ITEM - 1)]) for i in range(20)]
    return build_pair(tmp_path / "document", items)


def test_pythia_order_is_item_order_split_over_ranks(pythia_pair):
    data = PythiaPreshuffled(pythia_pair, vocab_size=50304)
    order = DataOrder(global_batch=4, dp_size=2)
    assert order.steps(len(data)) == 5
    for step in range(5):
        ranks = [next(iter(data.batches(order, r, start_step=step)))[:, 0].tolist() for r in (0, 1)]
        assert ranks == [[4 * step, 4 * step + 1], [4 * step + 2, 4 * step + 3]]
    seen = [b[:, 0].tolist() for r in (0, 1) for b in data.batches(order, r)]
    assert sorted(sum(seen, [])) == list(range(20))  # every item once, no overlap
    batch = next(iter(data.batches(order, 0)))
    assert batch.shape == (2, ITEM) and batch.dtype == torch.int64


def test_max_train_samples_offset_and_resume(pythia_pair):
    data = PythiaPreshuffled(pythia_pair)
    order = DataOrder(global_batch=3, first_item=2, max_train_samples=13)
    assert order.steps(len(data)) == 4  # 13 samples → 4 whole batches of 3
    full = [b[:, 0].tolist() for b in data.batches(order, 0)]
    assert full == [[2, 3, 4], [5, 6, 7], [8, 9, 10], [11, 12, 13]]
    for step in range(4):
        resumed = [b[:, 0].tolist() for b in data.batches(order, 0, start_step=step)]
        assert resumed == full[step:]


@pytest.mark.parametrize(
    "settings, match",
    [
        (dict(first_item=-4), "first_item=-4 must be non-negative"),
        (dict(max_train_samples=-5), "max_train_samples=-5 must be positive"),
        (dict(max_train_samples=0), "max_train_samples=0 must be positive"),
        (dict(epochs=0), "epochs=0 must be positive"),
        (dict(dp_size=0), "data-parallel size 0 must be positive"),
    ],
)
def test_orders_that_would_wrap_around_or_hold_nothing_are_refused(settings, match):
    with pytest.raises(ValueError, match=match):
        DataOrder(global_batch=2, **settings)


def test_epochs_repeat_the_same_samples_in_order(pythia_pair):
    data = PythiaPreshuffled(pythia_pair)
    order = DataOrder(global_batch=3, max_train_samples=7, epochs=2)
    assert order.steps(len(data)) == 4  # 2 whole batches of the first 7 samples, twice
    full = [b[:, 0].tolist() for b in data.batches(order, 0)]
    assert full == [[0, 1, 2], [3, 4, 5], [0, 1, 2], [3, 4, 5]]
    assert [b[:, 0].tolist() for b in data.batches(order, 0, start_step=3)] == full[3:]


def test_one_shard_with_the_full_index(tmp_path, pythia_pair):
    # Shard 0 of the Pile: the .bin holds only the first items the index describes.
    os.truncate(f"{pythia_pair}.bin", 2 * (5 * ITEM + 100))
    with pytest.raises(DatasetError, match="truncated, or not the index"):
        PythiaPreshuffled(pythia_pair)
    data = PythiaPreshuffled(pythia_pair, allow_short_bin=True)
    assert len(data) == 5 and data[4][0] == 4
    with pytest.raises(IndexError, match="item 5 is past the end .* holds 5 of the index's 20"):
        data[5]


def test_wrong_item_length_is_refused(tmp_path):
    prefix = build_pair(tmp_path / "doc", [np.zeros(ITEM), np.zeros(100)])
    with pytest.raises(DatasetError, match="item 1 has 100 tokens"):
        PythiaPreshuffled(prefix)


def test_merge_shards_reassembles_the_bin(tmp_path, pythia_pair):
    whole = Path(f"{pythia_pair}.bin").read_bytes()
    cut = 7 * ITEM * 2 + 1000  # shards need not end on an item boundary
    shards = [tmp_path / "s0.bin", tmp_path / "s1.bin"]
    shards[0].write_bytes(whole[:cut])
    shards[1].write_bytes(whole[cut:])
    summary = merge_shards(shards, f"{pythia_pair}.idx", tmp_path / "merged")
    assert summary.sequences == 20 and summary.prefix == str(tmp_path / "merged")
    assert (tmp_path / "merged.bin").read_bytes() == whole
    with pytest.raises(DatasetError, match="truncated") as error:
        merge_shards(shards[:1], f"{pythia_pair}.idx", tmp_path / "partial")
    assert str(shards[0]) in str(error.value) and f"{pythia_pair}.idx" in str(error.value)
    assert "tmp" not in str(error.value).replace(str(tmp_path), "")  # not the temporary files
    assert not list(tmp_path.glob("partial*"))


def test_blended_gpt_datasets_from_preprocessed_corpora(runtime, tmp_path, tokenizer_dir):
    from megatron_mamba.data.corpus import HFTokenizerInfo, build_gpt_datasets

    tok = load_tokenizer(tokenizer_dir)
    lines = corpus_lines() * 10
    streams = {}
    for name, docs in (("a", lines[::2]), ("b", lines[1::2])):
        preprocess(
            [write_jsonl(tmp_path / f"{name}.jsonl", docs)],
            tokenizer_dir,
            tmp_path / name,
            progress=False,
        )
        dataset, _ = open_indexed(tmp_path / name)
        streams[name] = np.concatenate([dataset[i] for i in range(len(dataset))]).tolist()

    def build():
        return build_gpt_datasets(
            [(tmp_path / "a", 0.7), (tmp_path / "b", 0.3)],
            HFTokenizerInfo.from_hf(tok),
            sequence_length=16,
            samples=(20, 4, 0),
            split="90,10,0",
            cache_dir=tmp_path / "cache",
        )

    train, valid, _ = build()
    assert len(train) >= 20 and len(valid) >= 4
    sample = train[0]
    assert sample["tokens"].shape == (16,) and sample["labels"].shape == (16,)
    torch.testing.assert_close(sample["tokens"][1:], sample["labels"][:-1])

    def inside(window, stream):
        n = len(window)
        return any(stream[i : i + n] == window for i in range(len(stream) - n + 1))

    for i in range(5):  # every sample is a real window of one of the corpora
        window = train[i]["tokens"].tolist() + [int(train[i]["labels"][-1])]
        assert inside(window, streams["a"]) or inside(window, streams["b"])
    again, _, _ = build()  # same seed and cache: the same samples
    for i in range(5):
        torch.testing.assert_close(again[i]["tokens"], train[i]["tokens"])


def test_corpora_with_tokens_outside_the_vocabulary_are_refused(tmp_path, tokenizer_dir):
    from megatron_mamba.data.corpus import HFTokenizerInfo, build_gpt_datasets

    prefix = build_pair(tmp_path / "big", [np.array([1, 2, 5000])])
    with pytest.raises(DatasetError, match="token id 5000, outside the model's vocabulary of 300"):
        build_gpt_datasets([(prefix, 1.0)], HFTokenizerInfo(300, 2), 4, (4, 0, 0))


def test_an_empty_split_is_refused_not_looped_on(tmp_path):
    from megatron_mamba.data.corpus import HFTokenizerInfo, build_gpt_datasets

    prefix = build_pair(tmp_path / "few", [np.arange(10)] * 4)
    with pytest.raises(ValueError, match="4 documents; split '90,10,0' leaves its valid part"):
        build_gpt_datasets([(prefix, 1.0)], HFTokenizerInfo(300, 2), 4, (4, 2, 0), split="90,10,0")


@pytest.mark.parametrize(
    "dtype", [np.uint8, np.int8, np.int16, np.int32, np.int64, np.float64, np.float32, np.uint16]
)
def test_every_token_dtype_reads_back(tmp_path, dtype):
    items = [np.arange(n, dtype=dtype) % 100 for n in (3, 8, 1)]
    prefix = build_pair(tmp_path / "t", items, dtype=dtype)
    dataset, summary = open_indexed(prefix, vocab_size=100)
    assert summary.dtype == dtype and summary.max_token == 7
    for i, item in enumerate(items):
        np.testing.assert_array_equal(dataset[i], item)


def test_corpus_samples_are_real_windows_read_in_the_trainer_order(
    runtime, tmp_path, tokenizer_dir
):
    from megatron_mamba.data.corpus import CorpusSamples, HFTokenizerInfo

    tok = load_tokenizer(tokenizer_dir)
    prefix = tmp_path / "corpus"
    preprocess([write_jsonl(tmp_path / "in.jsonl", corpus_lines() * 4)], tokenizer_dir, prefix)
    dataset, _ = open_indexed(prefix)
    documents = [dataset[i].tolist() for i in range(len(dataset))]
    info = HFTokenizerInfo.from_hf(tok)
    data = CorpusSamples(str(prefix), info, item_length=17, seed=3, cache_dir=tmp_path / "cache")
    tokens = sum(map(len, documents))
    assert len(data) == (tokens - 1) // 16  # one epoch of every token

    def inside_a_document(piece):
        n = len(piece)
        return any(d[s : s + n] == piece for d in documents for s in range(len(d) - n + 1))

    for i in range(len(data)):  # documents (shuffled) joined: each piece up to an EOD is real
        window = data[i].tolist()
        assert len(window) == 17
        ends = [j + 1 for j, t in enumerate(window) if t == info.eod]
        pieces = [window[a:b] for a, b in zip([0, *ends], [*ends, 17], strict=True) if b > a]
        assert all(inside_a_document(piece) for piece in pieces), window
    order = DataOrder(global_batch=4, dp_size=2)
    rank0, rank1 = (list(data.batches(order, r)) for r in (0, 1))
    assert len(rank0) == len(data) // 4 and rank0[0].shape == (2, 17)
    np.testing.assert_array_equal(rank1[1][0], data[6])
    resumed = next(iter(data.batches(order, 0, start_step=2)))
    torch.testing.assert_close(resumed, rank0[2])
    other_seed = CorpusSamples(str(prefix), info, 17, seed=4, cache_dir=tmp_path / "cache")
    assert any((other_seed[i] != data[i]).any() for i in range(len(data)))


def test_corpus_blends_need_a_sample_count(tmp_path, tokenizer_dir):
    from megatron_mamba.data.corpus import CorpusSamples, HFTokenizerInfo, parse_blend

    assert parse_blend("0.7 a 0.3 b") == [("a", 0.7), ("b", 0.3)]
    assert parse_blend("a b") == [("a", None), ("b", None)]
    with pytest.raises(ValueError, match="not a list of weight prefix pairs"):
        parse_blend("0.7 a 0.3")
    info = HFTokenizerInfo.from_hf(load_tokenizer(tokenizer_dir))
    with pytest.raises(ValueError, match="set train.max_train_samples"):
        CorpusSamples("0.5 a 0.5 b", info, 17, seed=0)


def test_negative_token_ids_are_outside_the_vocabulary(tmp_path):
    prefix = build_pair(tmp_path / "signed", [np.array([1, -5, 3])], dtype=np.int32)
    with pytest.raises(DatasetError, match="token id -5, outside the model's vocabulary of 10"):
        check_pair(prefix, vocab_size=10)


def test_an_empty_pair_is_refused_with_a_clear_error(tmp_path):
    from megatron_mamba.data.held_out import HeldOutWindows

    prefix = build_pair(tmp_path / "empty", [])
    assert check_pair(prefix, vocab_size=10).tokens == 0  # a valid (mergeable) empty pair
    with pytest.raises(DatasetError, match=r"empty.bin is empty: there are no tokens"):
        open_indexed(prefix)
    with pytest.raises(DatasetError, match="has 0 held-out windows"):
        HeldOutWindows(prefix, seq_length=4)


@pytest.mark.parametrize(
    "settings, match",
    [
        (dict(max_windows=0), "max_windows=0 must be positive"),
        (dict(max_windows=-2), "max_windows=-2 must be positive"),
        (dict(seq_length=0), "seq_length=0 must be positive"),
    ],
)
def test_held_out_sizes_must_be_positive(small_pair, settings, match):
    from megatron_mamba.data.held_out import HeldOutWindows

    with pytest.raises(ValueError, match=match):
        HeldOutWindows(small_pair, **{"seq_length": 4, **settings})


def test_preprocess_refuses_input_without_documents(tmp_path, tokenizer_dir):
    source = tmp_path / "in.jsonl"
    source.write_text("\n\n")
    with pytest.raises(ValueError, match=r"in.jsonl holds no documents"):
        preprocess([source], tokenizer_dir, tmp_path / "out", progress=False)
    assert sorted(os.listdir(tmp_path)) == ["in.jsonl"]


def test_preprocess_names_a_file_that_is_not_utf8(tmp_path, tokenizer_dir):
    source = tmp_path / "in.txt"
    source.write_bytes(b"fine\n\xff\xfe not utf-8\n")
    with pytest.raises(ValueError, match=r"in.txt is not UTF-8 text"):
        preprocess([source], tokenizer_dir, tmp_path / "out", progress=False)
    assert sorted(os.listdir(tmp_path)) == ["in.txt"]
