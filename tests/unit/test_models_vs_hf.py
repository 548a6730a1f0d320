"""Our attention-only GPTNeoX, Llama and Mistral give transformers' logits (fp32, rel ≤ 1e-5)."""

import pytest
import torch

from tests.helpers.hf_tiny import (
    VOCAB,
    native_twin,
    randomize_norms,
    tiny_gpt_neox,
    tiny_llama,
    tiny_mistral,
)


def _tokens(batch: int = 2, seq: int = 16) -> torch.Tensor:
    return torch.randint(0, VOCAB, (batch, seq), generator=torch.Generator().manual_seed(3))


def _assert_same_logits(hf_model, **overrides):
    randomize_norms(hf_model)
    ours, config = native_twin(hf_model, **overrides)
    tokens = _tokens()
    with torch.no_grad():
        expected = hf_model(tokens).logits
        got = ours(tokens, None, None)
    assert got.shape[-1] == config.padded_vocab_size(1)
    got = got[..., :VOCAB]
    rel = ((got - expected).abs().max() / expected.abs().max()).item()
    assert rel <= 1e-5, f"relative error {rel:.2e}"


@pytest.mark.parametrize("parallel_residual", [True, False])
def test_gpt_neox_matches_transformers(runtime, parallel_residual):
    _assert_same_logits(tiny_gpt_neox(parallel_residual))


@pytest.mark.parametrize("tied", [False, True])
def test_llama_matches_transformers(runtime, tied):
    _assert_same_logits(tiny_llama(tied=tied))


def test_llama3_rope_scaling_matches_transformers(runtime):
    _assert_same_logits(tiny_llama(llama3_rope=True))


def test_mistral_within_window_matches_transformers(runtime):
    _assert_same_logits(tiny_mistral(window=16))


def test_mistral_refuses_sequences_longer_than_the_window(runtime):
    ours, _ = native_twin(tiny_mistral(window=8))
    with pytest.raises(ValueError, match="sequence length 16 exceeds the sliding window 8"):
        ours(_tokens(seq=16), None, None)


def test_an_attention_mask_is_refused_rather_than_ignored(runtime):
    ours, _ = native_twin(tiny_gpt_neox(True))
    tokens = _tokens()
    mask = torch.ones(2, 1, 16, 16, dtype=torch.bool)
    with pytest.raises(ValueError, match="attention_mask is not supported by MixerBlock"):
        ours(tokens, None, mask)


def test_packed_sequences_are_refused_by_the_block(runtime):
    ours, _ = native_twin(tiny_gpt_neox(True))
    block = ours.decoder.layers[0]
    hidden = torch.randn(16, 2, 64)
    with pytest.raises(ValueError, match="packed_seq_params is not supported by MixerBlock"):
        block(hidden, packed_seq_params=object())
