"""The conversion tables: GPTNeoX (Pythia) and Llama/Mistral, with their Mamba mixers.

Mamba mixers carry the names of the projects that publish such hybrids, so their checkpoints
import here and ours run with their code: in GPTNeoX models CALD's
(`gpt_neox.layers.{i}.attention.mamba.*`, transformers' MambaMixer names), in Llama/Mistral models
MambaInLlama's (`model.layers.{i}.mamba.*`; its Mamba1 splits our fused in_proj into in_proj_x,
in_proj_z, B_proj and C_proj).
"""

from __future__ import annotations

import torch

from megatron_mamba.config import ModelConfig
from megatron_mamba.convert.layouts import fuse_qkv, pad_vocab, split_qkv
from megatron_mamba.convert.mapping import Context, Rule, Table, Transform
from megatron_mamba.models.mamba_dims import mamba1_dims

VOCAB = Transform(
    "vocab",
    lambda ts, ctx: pad_vocab(ts[0], ctx.model.vocab_size, ctx.padded_vocab),
    lambda t, ctx: [t[: ctx.model.vocab_size]],
)
QKV = Transform(
    "qkv",
    lambda ts, ctx: fuse_qkv(*ts, ctx.model),
    lambda t, ctx: list(split_qkv(t, ctx.model)),
)
GATE_UP = Transform("gate_up", lambda ts, ctx: torch.cat(ts), lambda t, ctx: list(t.chunk(2)))


def _mamba1_segments(ctx: Context) -> list[int]:
    return list(mamba1_dims(ctx.model).in_proj_segments)


XZBC = Transform(
    "mamba1_xzbc",
    lambda ts, ctx: torch.cat(ts),
    lambda t, ctx: list(t.split(_mamba1_segments(ctx))),
)

_MIXER = "decoder.layers.{i}.mixer."


def _same_names(hf_prefix: str, names: list[str]) -> tuple[Rule, ...]:
    return tuple(Rule(_MIXER + n, hf_prefix + n) for n in names)


_CONV_OUT = ["conv1d.weight", "conv1d.bias", "out_proj.weight", "out_proj.bias"]


def _mamba_rules(kind: str, model: ModelConfig, hf_prefix: str) -> tuple[Rule, ...]:
    if kind == "mamba2":
        names = ["in_proj.weight", "in_proj.bias", "dt_bias", "A_log", "D", "norm.weight"]
        return _same_names(hf_prefix, names + _CONV_OUT)
    common = ["dt_proj.weight", "dt_proj.bias", "A_log", "D", *_CONV_OUT]
    if model.mamba.layout == "classic":
        return _same_names(hf_prefix, ["in_proj.weight", "in_proj.bias", "x_proj.weight", *common])
    split = ("in_proj_x", "in_proj_z", "B_proj", "C_proj")
    return (
        Rule(_MIXER + "in_proj.weight", tuple(f"{hf_prefix}{p}.weight" for p in split), XZBC),
        Rule(_MIXER + "in_proj.bias", tuple(f"{hf_prefix}{p}.bias" for p in split), XZBC),
        *_same_names(hf_prefix, ["dt_proj_down.weight", *common]),
    )


def _neox_mixer(kind: str, model: ModelConfig) -> tuple[Rule, ...]:
    src = "gpt_neox.layers.{i}.attention."
    if kind != "attention":
        return _mamba_rules(kind, model, src + "mamba.")
    return tuple(
        Rule(f"{_MIXER}{ours}.{p}", f"{src}{theirs}.{p}")
        for ours, theirs in (("linear_qkv", "query_key_value"), ("linear_proj", "dense"))
        for p in ("weight", "bias")
    )


def _llama_mixer(kind: str, model: ModelConfig) -> tuple[Rule, ...]:
    if kind != "attention":
        return _mamba_rules(kind, model, "model.layers.{i}.mamba.")
    src = "model.layers.{i}.self_attn."
    return (
        Rule(_MIXER + "linear_qkv.weight", tuple(f"{src}{p}_proj.weight" for p in "qkv"), QKV),
        Rule(_MIXER + "linear_proj.weight", src + "o_proj.weight"),
    )


_NEOX_LAYER = "gpt_neox.layers.{i}."
_NATIVE_LAYER = "decoder.layers.{i}."

GPT_NEOX = Table(
    family="gpt_neox",
    globals=(
        Rule("embedding.word_embeddings.weight", "gpt_neox.embed_in.weight", VOCAB),
        Rule("decoder.final_layernorm.weight", "gpt_neox.final_layer_norm.weight"),
        Rule("decoder.final_layernorm.bias", "gpt_neox.final_layer_norm.bias"),
        # Pythia's name; transformers 5 calls it lm_head and renames embed_out on load.
        Rule("output_layer.weight", "embed_out.weight", VOCAB),
    ),
    block=tuple(
        Rule(f"{_NATIVE_LAYER}{ours}.{p}", f"{_NEOX_LAYER}{theirs}.{p}")
        for ours, theirs in (
            ("input_layernorm", "input_layernorm"),
            ("pre_mlp_layernorm", "post_attention_layernorm"),
            ("mlp.linear_fc1", "mlp.dense_h_to_4h"),
            ("mlp.linear_fc2", "mlp.dense_4h_to_h"),
        )
        for p in ("weight", "bias")
    ),
    mixer_rules=_neox_mixer,
    aliases={"embed_out.weight": ("lm_head.weight",)},
    ignored=(r"gpt_neox\.layers\.\d+\.attention\.(bias|masked_bias|rotary_emb\.inv_freq)",),
)

_LLAMA_LAYER = "model.layers.{i}."

LLAMA = Table(
    family="llama",
    globals=(
        Rule("embedding.word_embeddings.weight", "model.embed_tokens.weight", VOCAB),
        Rule("decoder.final_layernorm.weight", "model.norm.weight"),
        Rule("output_layer.weight", "lm_head.weight", VOCAB),
    ),
    block=(
        Rule(_NATIVE_LAYER + "input_layernorm.weight", _LLAMA_LAYER + "input_layernorm.weight"),
        Rule(
            _NATIVE_LAYER + "pre_mlp_layernorm.weight",
            _LLAMA_LAYER + "post_attention_layernorm.weight",
        ),
        Rule(
            _NATIVE_LAYER + "mlp.linear_fc1.weight",
            (_LLAMA_LAYER + "mlp.gate_proj.weight", _LLAMA_LAYER + "mlp.up_proj.weight"),
            GATE_UP,
        ),
        Rule(_NATIVE_LAYER + "mlp.linear_fc2.weight", _LLAMA_LAYER + "mlp.down_proj.weight"),
    ),
    mixer_rules=_llama_mixer,
    ignored=(r"model\.layers\.\d+\.self_attn\.rotary_emb\.inv_freq",),
)

TABLES = {"gpt_neox": GPT_NEOX, "llama": LLAMA}


def table_for(model: ModelConfig) -> Table:
    return TABLES[model.arch]
