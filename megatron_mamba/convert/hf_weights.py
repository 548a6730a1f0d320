"""Whole-tensor weight maps between transformers' GPTNeoX/Llama/Mistral and the native layout.

Native names are megatron GPTModel's with our block (`decoder.layers.{i}.mixer...`). Only the
attention and MLP layouts need transforms: megatron's fused QKV groups [q…, k, v] per KV group
(GPTNeoX's fused QKV already is that layout per head), and a gated MLP's fc1 is [gate; up].
"""

from __future__ import annotations

import torch

from megatron_mamba.config import ModelConfig


def fuse_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, model: ModelConfig) -> torch.Tensor:
    """Separate q/k/v projections (weight or bias) → megatron's per-group [q…, k, v] layout."""
    groups, d = model.num_query_groups, model.head_dim
    per_group = model.num_attention_heads // groups
    tail = q.shape[1:]
    q = q.reshape(groups, per_group * d, *tail)
    k = k.reshape(groups, d, *tail)
    v = v.reshape(groups, d, *tail)
    return torch.cat([q, k, v], dim=1).reshape(-1, *tail)


def pad_vocab(weight: torch.Tensor, padded: int) -> torch.Tensor:
    """Zero rows for the padding tokens megatron adds so every TP rank gets an equal slice."""
    extra = padded - weight.shape[0]
    if extra < 0:
        raise ValueError(f"vocabulary of {weight.shape[0]} rows exceeds the padded size {padded}")
    return torch.cat([weight, weight.new_zeros(extra, *weight.shape[1:])]) if extra else weight


def _attention_layer(hf: dict, i: int, model: ModelConfig) -> dict[str, torch.Tensor]:
    out = {}
    nat = f"decoder.layers.{i}"
    if model.arch == "gpt_neox":
        src = f"gpt_neox.layers.{i}"
        for kind in ("weight", "bias"):
            out[f"{nat}.mixer.linear_qkv.{kind}"] = hf[f"{src}.attention.query_key_value.{kind}"]
            out[f"{nat}.mixer.linear_proj.{kind}"] = hf[f"{src}.attention.dense.{kind}"]
    else:
        src = f"model.layers.{i}.self_attn"
        out[f"{nat}.mixer.linear_qkv.weight"] = fuse_qkv(
            hf[f"{src}.q_proj.weight"],
            hf[f"{src}.k_proj.weight"],
            hf[f"{src}.v_proj.weight"],
            model,
        )
        out[f"{nat}.mixer.linear_proj.weight"] = hf[f"{src}.o_proj.weight"]
    return out


def _block(hf: dict, i: int, model: ModelConfig) -> dict[str, torch.Tensor]:
    nat = f"decoder.layers.{i}"
    out = {}
    if model.arch == "gpt_neox":
        src = f"gpt_neox.layers.{i}"
        for kind in ("weight", "bias"):
            out[f"{nat}.input_layernorm.{kind}"] = hf[f"{src}.input_layernorm.{kind}"]
            out[f"{nat}.pre_mlp_layernorm.{kind}"] = hf[f"{src}.post_attention_layernorm.{kind}"]
            out[f"{nat}.mlp.linear_fc1.{kind}"] = hf[f"{src}.mlp.dense_h_to_4h.{kind}"]
            out[f"{nat}.mlp.linear_fc2.{kind}"] = hf[f"{src}.mlp.dense_4h_to_h.{kind}"]
    else:
        src = f"model.layers.{i}"
        out[f"{nat}.input_layernorm.weight"] = hf[f"{src}.input_layernorm.weight"]
        out[f"{nat}.pre_mlp_layernorm.weight"] = hf[f"{src}.post_attention_layernorm.weight"]
        out[f"{nat}.mlp.linear_fc1.weight"] = torch.cat(
            [hf[f"{src}.mlp.gate_proj.weight"], hf[f"{src}.mlp.up_proj.weight"]]
        )
        out[f"{nat}.mlp.linear_fc2.weight"] = hf[f"{src}.mlp.down_proj.weight"]
    return out


def _first(hf: dict[str, torch.Tensor], *names: str) -> torch.Tensor:
    for name in names:
        if name in hf:
            return hf[name]
    raise KeyError(f"none of {names} is in the transformers state dict")


def native_from_hf(
    hf: dict[str, torch.Tensor], model: ModelConfig, tensor_parallel: int = 1
) -> dict[str, torch.Tensor]:
    """The whole native state dict of an attention-only model from a transformers state dict."""
    padded = model.padded_vocab_size(tensor_parallel)
    neox = model.arch == "gpt_neox"
    embed = hf["gpt_neox.embed_in.weight" if neox else "model.embed_tokens.weight"]
    out = {"embedding.word_embeddings.weight": pad_vocab(embed, padded)}
    for i, mixer in enumerate(model.mixers):
        out.update(_block(hf, i, model))
        if mixer == "attention":
            out.update(_attention_layer(hf, i, model))
    final = "gpt_neox.final_layer_norm" if neox else "model.norm"
    out["decoder.final_layernorm.weight"] = hf[f"{final}.weight"]
    if neox:
        out["decoder.final_layernorm.bias"] = hf[f"{final}.bias"]
    if not model.tie_embeddings:
        # Pythia checkpoints name the head embed_out; transformers 5 models call it lm_head.
        head = _first(hf, "embed_out.weight", "lm_head.weight") if neox else hf["lm_head.weight"]
        out["output_layer.weight"] = pad_vocab(head, padded)
    return out
