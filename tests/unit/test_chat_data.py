"""Chat and preference examples: the loss mask covers exactly the assistant turns."""

import copy

import pytest
import torch

from megatron_mamba.data.chat import pad_batch, read_jsonl, tokenize_chat, tokenize_preference
from megatron_mamba.data.indexed import DatasetError
from megatron_mamba.data.preprocess import load_tokenizer
from tests.helpers.tiny_tokenizer import make_tokenizer

CONVERSATION = [
    {"role": "system", "content": "You are a terse assistant."},
    {"role": "user", "content": "Name a colour."},
    {"role": "assistant", "content": "Blue, like the sea."},
    {"role": "user", "content": "Another one?"},
    {"role": "assistant", "content": "Green."},
]


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return load_tokenizer(make_tokenizer(tmp_path_factory.mktemp("tok")))


def masked_text(tokenizer, example, keep: int) -> str:
    ids = [t for t, m in zip(example.input_ids, example.assistant_mask, strict=True) if m == keep]
    return tokenizer.decode(ids)


def test_mask_covers_exactly_the_assistant_turns(tokenizer):
    example = tokenize_chat(tokenizer, CONVERSATION)
    # Zephyr's template renders a turn as "<|assistant|>\n" + content + eos + "\n" and the
    # generation prompt as "<|assistant|>\n": the turn's own part is content, eos and newline.
    assert masked_text(tokenizer, example, 1) == "Blue, like the sea.<eos>\nGreen.<eos>\n"
    rest = masked_text(tokenizer, example, 0)
    assert "Blue" not in rest and "Green" not in rest
    assert rest.count("<|assistant|>") == 2 and "Name a colour." in rest
    assert tokenizer.decode(example.input_ids) == tokenizer.apply_chat_template(
        CONVERSATION, tokenize=False
    )


def test_preference_masks_cover_only_the_responses(tokenizer):
    pair = tokenize_preference(tokenizer, "Name a colour.", "Blue.", "I would rather not.")
    assert masked_text(tokenizer, pair.chosen, 1) == "Blue.<eos>\n"
    assert masked_text(tokenizer, pair.rejected, 1) == "I would rather not.<eos>\n"
    prompt = [{"role": "user", "content": "Name a colour."}]
    full = [*prompt, {"role": "assistant", "content": "Blue."}]
    as_messages = tokenize_preference(tokenizer, prompt, full, "No.")
    assert as_messages.chosen == pair.chosen


def test_padded_batch_shifts_the_mask_to_targets(tokenizer):
    examples = [tokenize_chat(tokenizer, CONVERSATION[1:3]), tokenize_chat(tokenizer, CONVERSATION)]
    batch = pad_batch(examples, tokenizer.pad_token_id)
    short = examples[0]
    n = len(short.input_ids)
    assert batch["tokens"].shape == (2, len(examples[1].input_ids))
    assert (batch["tokens"][0, n:] == tokenizer.pad_token_id).all()
    assert not batch["attention_mask"][0, n:].any() and batch["attention_mask"][1].all()
    # Position t is trained to predict token t+1, which is an assistant token.
    expected = torch.tensor(short.assistant_mask[1:], dtype=torch.float32)
    torch.testing.assert_close(batch["loss_mask"][0, : n - 1], expected)
    assert batch["loss_mask"][0, n - 1 :].sum() == 0


def test_a_template_that_is_not_prefix_stable_is_refused(tokenizer):
    odd = tokenizer.__class__.from_pretrained(tokenizer.name_or_path)
    odd.chat_template = "{% for m in messages|reverse %}{{ m['content'] }}{% endfor %}"
    with pytest.raises(ValueError, match="not render a conversation as a prefix"):
        tokenize_chat(odd, CONVERSATION)


def test_jsonl_records_are_checked(tmp_path):
    path = tmp_path / "prefs.jsonl"
    path.write_text('{"prompt": "a", "chosen": "b", "rejected": "c"}\n{"prompt": "a"}\n')
    records = read_jsonl(path, ("prompt", "chosen", "rejected"))
    where, record = next(records)
    assert where == f"{path}:1" and record["chosen"] == "b"
    with pytest.raises(DatasetError, match="prefs.jsonl:2 lacks chosen, rejected"):
        next(records)


# A template that adds a default system prompt when the conversation has none.
DEFAULT_SYSTEM = (
    "{% if messages[0]['role'] != 'system' %}<|system|>\nYou are helpful.<eos>\n{% endif %}"
    "{% for m in messages %}{{ '<|' + m['role'] + '|>\n' + m['content'] + '<eos>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


@pytest.mark.parametrize("template", ["zephyr", "default system prompt"])
def test_an_assistant_first_conversation_masks_only_the_assistant_text(tokenizer, template):
    """The template's preamble and role header before a first assistant turn carry no loss."""
    if template != "zephyr":
        tokenizer = tokenizer.__class__.from_pretrained(tokenizer.name_or_path)
        tokenizer.chat_template = DEFAULT_SYSTEM
    conversation = [
        {"role": "assistant", "content": "Hi, how can I help?"},
        {"role": "user", "content": "Name a colour."},
        {"role": "assistant", "content": "Green."},
    ]
    example = tokenize_chat(tokenizer, conversation)
    assert masked_text(tokenizer, example, 1) == "Hi, how can I help?<eos>\nGreen.<eos>\n"
    rest = masked_text(tokenizer, example, 0)
    assert rest.count("<|assistant|>") == 2
    assert ("You are helpful." in rest) == (template != "zephyr")


def _with_bos(tokenizer, template_adds_it: bool):
    """The tiny tokenizer made to start every text with <s>, as Llama's and Mistral's do."""
    from tokenizers.processors import TemplateProcessing

    tokenizer = copy.deepcopy(tokenizer)
    tokenizer.add_special_tokens({"bos_token": "<s>"})
    bos = tokenizer.bos_token_id
    tokenizer.backend_tokenizer.post_processor = TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", bos)]
    )
    if template_adds_it:
        tokenizer.chat_template = "{{ bos_token }}" + tokenizer.chat_template
    return tokenizer


@pytest.mark.parametrize("template_adds_it", [False, True])
def test_a_tokenizer_that_starts_texts_with_bos_gets_exactly_one(tokenizer, template_adds_it):
    """As alignment-handbook's Zephyr SFT (the rendered chat tokenized as text): one BOS first,
    outside the loss, whether or not the template writes it."""
    with_bos = _with_bos(tokenizer, template_adds_it)
    example = tokenize_chat(with_bos, CONVERSATION)
    assert example.input_ids[0] == with_bos.bos_token_id and example.assistant_mask[0] == 0
    assert example.input_ids.count(with_bos.bos_token_id) == 1
    plain = tokenize_chat(tokenizer, CONVERSATION)
    if not template_adds_it:
        assert example.input_ids[1:] == plain.input_ids
        assert example.assistant_mask[1:] == plain.assistant_mask
    assert masked_text(with_bos, example, 1) == "Blue, like the sea.<eos>\nGreen.<eos>\n"


def test_an_empty_system_message_is_inserted_as_alignment_handbook_does(tokenizer):
    """Zephyr's template knows the system role: a record without one gets an empty one first,
    outside the loss; a record with one keeps it alone."""
    turns = CONVERSATION[1:]
    example = tokenize_chat(tokenizer, turns, empty_system=True)
    assert tokenizer.decode(example.input_ids).startswith("<|system|>\n<eos>\n<|user|>")
    assert masked_text(tokenizer, example, 1) == "Blue, like the sea.<eos>\nGreen.<eos>\n"
    assert tokenize_chat(tokenizer, turns).input_ids != example.input_ids
    given = tokenize_chat(tokenizer, CONVERSATION, empty_system=True)
    assert given.input_ids == tokenize_chat(tokenizer, CONVERSATION).input_ids
    pair = tokenize_preference(tokenizer, "Name a colour.", "Blue.", "No.", empty_system=True)
    for side in (pair.chosen, pair.rejected):
        assert tokenizer.decode(side.input_ids).startswith("<|system|>\n<eos>\n")


def test_a_multi_turn_prompt_keeps_its_assistant_turns_out_of_the_preference_loss(tokenizer):
    """DPO compares the log-probabilities of the responses only: an assistant turn inside the
    prompt is context, as in TRL (its prompt is everything before the last turn)."""
    prompt = CONVERSATION[:4]  # system, user, assistant, user
    pair = tokenize_preference(tokenizer, prompt, "Green.", "Red.", empty_system=True)
    assert masked_text(tokenizer, pair.chosen, 1) == "Green.<eos>\n"
    assert masked_text(tokenizer, pair.rejected, 1) == "Red.<eos>\n"
    assert "Blue, like the sea." in masked_text(tokenizer, pair.chosen, 0)
    as_conversations = tokenize_preference(
        tokenizer, prompt, [*prompt, {"role": "assistant", "content": "Green."}], "Red."
    )
    assert as_conversations.chosen == tokenize_preference(tokenizer, prompt, "Green.", "x").chosen


def _split(tokenizer, example):
    """(prompt tokens, response tokens) of a pair's side, split where its mask begins."""
    start = example.assistant_mask.index(1)
    return example.input_ids[:start], example.input_ids[start:]


LONG_PROMPT = " ".join(f"the {w} sea" for w in ("blue", "green", "red", "grey") * 2)


@pytest.mark.parametrize("max_length", [200, 100, 30])
def test_preference_truncation_keeps_the_end_of_the_prompt_as_trl(tokenizer, max_length):
    """TRL 0.8's DPOTrainer (truncation_mode keep_end, MambaInLlama's pin): where prompt plus
    the longer response is over max_length, the prompt keeps its last max_prompt_length tokens;
    if still over, each response keeps its first max_length − max_prompt_length. Checked against
    the untruncated pair's token lists."""
    chosen, rejected = "Blue, like the sea.", "Another one? " * 4
    full = tokenize_preference(tokenizer, LONG_PROMPT, chosen, rejected)
    cut = tokenize_preference(tokenizer, LONG_PROMPT, chosen, rejected, max_length, False, 16)
    prompt, responses = _split(tokenizer, full.chosen)[0], []
    for side in (full.chosen, full.rejected):
        assert _split(tokenizer, side)[0] == prompt
        responses.append(_split(tokenizer, side)[1])
    longer = max(len(r) for r in responses)
    assert len(prompt) > 16 and 16 + longer > 30  # all three regimes occur
    kept_prompt = prompt if len(prompt) + longer <= max_length else prompt[-16:]
    for side, response in zip((cut.chosen, cut.rejected), responses, strict=True):
        kept = response if len(kept_prompt) + longer <= max_length else response[: max_length - 16]
        assert side.input_ids == kept_prompt + kept
        assert side.assistant_mask == [0] * len(kept_prompt) + [1] * len(kept)
    if max_length == 200:
        assert cut == full
    if max_length == 100:  # the prompt cut from the left, the responses whole
        assert tokenizer.decode(cut.chosen.input_ids).endswith(
            "<|assistant|>\n" + chosen + "<eos>\n"
        )
    no_prompt_limit = tokenize_preference(tokenizer, LONG_PROMPT, chosen, rejected, max_length)
    assert no_prompt_limit.chosen.input_ids == full.chosen.input_ids[:max_length]


def test_only_the_last_message_of_a_multi_turn_response_carries_the_preference_loss(tokenizer):
    """alignment-handbook's DPO takes every message but the last as the prompt."""
    prompt = [{"role": "user", "content": "Name a colour."}]
    chosen = [
        {"role": "assistant", "content": "Blue, like the sea."},
        {"role": "user", "content": "Another one?"},
        {"role": "assistant", "content": "Green."},
    ]
    pair = tokenize_preference(tokenizer, prompt, chosen, "Red.")
    assert masked_text(tokenizer, pair.chosen, 1) == "Green.<eos>\n"
    assert "Blue, like the sea." in masked_text(tokenizer, pair.chosen, 0)
