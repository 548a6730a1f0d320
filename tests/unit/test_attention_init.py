"""Mamba mixers initialised from attention carry transformers' V/K/Q/O weights exactly where
MambaInLlama puts them; everything else comes from the attention model or stays fresh."""

import pytest
import torch

from megatron_mamba.config import ParallelConfig
from megatron_mamba.convert.attention_to_mamba import swap_mixers
from megatron_mamba.convert.hf_config import model_config_from_hf
from megatron_mamba.convert.hf_weights import native_from_hf
from megatron_mamba.models.build import build_model
from megatron_mamba.parallel.shards import load_full_state, local_shards
from tests.helpers.hf_tiny import VOCAB, tiny_gpt_neox, tiny_llama


def _mixer_of(state):
    def new_mixer(kind, layer):
        prefix = f"decoder.layers.{layer}.mixer."
        return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}

    return new_mixer


def hf_qkvo(hf, layer: int):
    """q, k, v, o weights (and biases, or None) as transformers' own attention reads them."""
    if hf.config.model_type == "gpt_neox":
        attn = hf.gpt_neox.layers[layer].attention
        heads, d = hf.config.num_attention_heads, hf.config.hidden_size // 4

        def per_head(t):  # GPTNeoX views qkv as [heads, 3·head_dim] and splits the last dim
            q, k, v = t.reshape(heads, 3 * d, *t.shape[1:]).split(d, dim=1)
            return [x.reshape(heads * d, *t.shape[1:]) for x in (q, k, v)]

        w = per_head(attn.query_key_value.weight) + [attn.dense.weight]
        b = per_head(attn.query_key_value.bias) + [attn.dense.bias]
        return w, b
    attn = hf.model.layers[layer].self_attn
    w = [attn.q_proj.weight, attn.k_proj.weight, attn.v_proj.weight, attn.o_proj.weight]
    return w, [None] * 4


@pytest.mark.parametrize("arch", ["gpt_neox", "llama"])
def test_mixers_initialised_from_attention(runtime, arch):
    hf = tiny_gpt_neox(True, layers=3) if arch == "gpt_neox" else tiny_llama(layers=3)
    attention_cfg = model_config_from_hf(hf.config)
    attention_state = native_from_hf(hf.state_dict(), attention_cfg)
    hybrid_cfg = model_config_from_hf(
        hf.config, layer_pattern="MAS", mamba={"layout": "attention", "init": "attention"}
    )
    hybrid = build_model(hybrid_cfg, ParallelConfig())
    fresh = {k: v for k, (v, _) in local_shards(hybrid).items()}
    state = swap_mixers(attention_state, attention_cfg, hybrid_cfg, _mixer_of(fresh))

    assert state.keys() == fresh.keys()
    for layer, blocks in ((0, ["x", "z", "B", "C"]), (2, ["z", "x", "B", "C", "dt"])):
        (q, k, v, o), (qb, kb, vb, ob) = hf_qkvo(hf, layer)
        mixer = f"decoder.layers.{layer}.mixer."
        d_inner, d_xb = q.shape[0], k.shape[0]
        sizes = {"x": d_xb, "z": d_inner, "B": d_xb, "C": d_inner, "dt": 4}

        def blocks_of(t, blocks=blocks, sizes=sizes):
            return dict(zip(blocks, t.split([sizes[b] for b in blocks]), strict=True))

        parts = blocks_of(state[mixer + "in_proj.weight"])
        torch.testing.assert_close(parts["x"], v, rtol=0, atol=0)
        torch.testing.assert_close(parts["B"], k, rtol=0, atol=0)
        torch.testing.assert_close(parts["C"], q, rtol=0, atol=0)
        torch.testing.assert_close(state[mixer + "out_proj.weight"], o, rtol=0, atol=0)
        fresh_parts = blocks_of(fresh[mixer + "in_proj.weight"])
        torch.testing.assert_close(parts["z"], fresh_parts["z"], rtol=0, atol=0)
        if qb is not None:
            bias = blocks_of(state[mixer + "in_proj.bias"])
            for got, expected in ((bias["x"], vb), (bias["B"], kb), (bias["C"], qb)):
                torch.testing.assert_close(got, expected, rtol=0, atol=0)
            torch.testing.assert_close(state[mixer + "out_proj.bias"], ob, rtol=0, atol=0)
        for name in ("conv1d.weight", "A_log", "D"):
            torch.testing.assert_close(state[mixer + name], fresh[mixer + name], rtol=0, atol=0)
    # Attention layer 1, norms, MLPs and embeddings all come from the attention model.
    for name, tensor in attention_state.items():
        if not any(name.startswith(f"decoder.layers.{i}.mixer.") for i in (0, 2)):
            torch.testing.assert_close(state[name], tensor, rtol=0, atol=0)

    load_full_state(hybrid, state)
    logits = hybrid(torch.randint(0, VOCAB, (1, 9)), None, None)
    assert torch.isfinite(logits).all()


def test_attention_biases_without_mixer_biases_are_refused(runtime):
    hf = tiny_gpt_neox(True, layers=1)
    attention_cfg = model_config_from_hf(hf.config)
    attention_state = native_from_hf(hf.state_dict(), attention_cfg)
    cfg = model_config_from_hf(
        hf.config,
        layer_pattern="S",
        mamba={"layout": "attention", "init": "attention", "proj_bias": False},
    )
    fresh = {k: v for k, (v, _) in local_shards(build_model(cfg, ParallelConfig())).items()}
    with pytest.raises(ValueError, match="set mamba.proj_bias"):
        swap_mixers(attention_state, attention_cfg, cfg, _mixer_of(fresh))
