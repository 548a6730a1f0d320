"""megatron's SelfAttention hands RoPE to our `apply_fused_qkv_rotary_pos_emb` (one function
from the fused QKV output to rotated queries and keys and the values, whose GPU kernel builds the
QKV gradient without a cat; models/rotary.py), and the models still give transformers' logits."""

import pytest
import torch
from megatron.core.transformer import attention as megatron_attention

from megatron_mamba.config import ParallelConfig
from megatron_mamba.convert.hf_config import model_config_from_hf
from megatron_mamba.models import rotary
from megatron_mamba.models.build import to_transformer_config
from tests.helpers.hf_tiny import VOCAB, native_twin, tiny_gpt_neox, tiny_llama


@pytest.mark.parametrize("make", [tiny_gpt_neox, tiny_llama], ids=["gpt_neox", "llama_gqa"])
def test_attention_takes_the_fused_qkv_rope_and_keeps_transformers_logits(
    runtime, monkeypatch, make
):
    hf = make()
    ours, config = native_twin(hf)
    calls = []
    fused = rotary.apply_fused_qkv_rotary_pos_emb

    def counted(*args):
        calls.append(args[3])
        return fused(*args)

    monkeypatch.setattr(megatron_attention, "apply_fused_qkv_rotary_pos_emb", counted)
    monkeypatch.setattr(megatron_attention, "apply_rotary_pos_emb", None)  # not the split path
    tokens = torch.randint(0, VOCAB, (2, 12))
    with torch.no_grad():
        got = ours(tokens, None, None)[..., :VOCAB]
        want = hf(tokens).logits
    assert len(calls) == config.num_layers
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_the_hook_is_off_where_a_rank_holds_part_of_a_query_group():
    model = model_config_from_hf(tiny_llama().config)  # 2 query groups
    assert to_transformer_config(model, ParallelConfig(tensor=2)).fused_single_qkv_rope
    assert not to_transformer_config(model, ParallelConfig(tensor=4)).fused_single_qkv_rope
