"""Tiny random transformers models (the independent reference) and their native twins."""

from __future__ import annotations

import torch
import transformers
from transformers import (
    GPTNeoXConfig,
    GPTNeoXForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
)

from megatron_mamba.config import ParallelConfig
from megatron_mamba.convert.hf_config import model_config_from_hf
from megatron_mamba.convert.hf_weights import native_from_hf
from megatron_mamba.models.build import build_model
from megatron_mamba.parallel.shards import load_full_state

VOCAB = 200  # not a multiple of 128: exercises vocabulary padding


_GQA_SHAPE = dict(  # the tiny Llama/Mistral shape: grouped-query attention, SwiGLU
    vocab_size=VOCAB,
    hidden_size=64,
    num_attention_heads=4,
    num_key_value_heads=2,
    intermediate_size=128,
    max_position_embeddings=64,
    attn_implementation="eager",
)


def tiny_gpt_neox(
    parallel_residual: bool = True,
    layers: int = 2,
    vocab: int = VOCAB,
    positions: int = 64,
    init_std: float = 0.02,
) -> GPTNeoXForCausalLM:
    """`init_std` well above transformers' 0.02 gives peaked, varied next-token distributions
    (greedy text that reacts to its context)."""
    config = GPTNeoXConfig(
        vocab_size=vocab,
        hidden_size=64,
        num_hidden_layers=layers,
        num_attention_heads=4,
        intermediate_size=256,
        max_position_embeddings=positions,
        use_parallel_residual=parallel_residual,
        initializer_range=init_std,
        rope_parameters={
            "rope_type": "default",
            "rope_theta": 10000.0,
            "partial_rotary_factor": 0.25,
        },
        attn_implementation="eager",
    )
    return GPTNeoXForCausalLM(config).eval()


def tiny_llama(tied: bool = False, layers: int = 2, llama3_rope: bool = False) -> LlamaForCausalLM:
    rope = {"rope_type": "default", "rope_theta": 500000.0}
    if llama3_rope:
        rope = {
            "rope_type": "llama3",
            "rope_theta": 500000.0,
            "factor": 32.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192,
        }
    config = LlamaConfig(
        **_GQA_SHAPE, num_hidden_layers=layers, tie_word_embeddings=tied, rope_parameters=rope
    )
    return LlamaForCausalLM(config).eval()


def tiny_mistral(window: int = 16, layers: int = 2) -> MistralForCausalLM:
    config = MistralConfig(**_GQA_SHAPE, num_hidden_layers=layers, sliding_window=window)
    return MistralForCausalLM(config).eval()


def randomize_norms(hf_model: torch.nn.Module, seed: int = 0) -> None:
    """transformers initialises norms to ones/zeros; random values catch swapped norms."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in hf_model.named_parameters():
            if "norm" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.5 + 1.0)


def native_twin(hf_model: torch.nn.Module, parallel: ParallelConfig | None = None, **overrides):
    """Our model built from the transformers config, carrying the same weights."""
    parallel = parallel or ParallelConfig()
    config = model_config_from_hf(hf_model.config, **overrides)
    model = build_model(config, parallel)
    load_full_state(model, native_from_hf(hf_model.state_dict(), config, parallel.tensor))
    return model.eval(), config


def tiny_hybrid(arch: str, layer_pattern: str, seed: int = 0, **mamba) -> torch.nn.Module:
    """A tiny random transformers hybrid (our classes, built straight from a config), with weights
    of O(1) effect (`strengthen`): a Mamba layer's state or padding handled wrongly moves the
    logits far beyond a test's tolerance."""
    from megatron_mamba.hf.configuration import HYBRID_CONFIGS

    base = {"gpt_neox": tiny_gpt_neox, "llama": tiny_llama, "mistral": tiny_mistral}[arch]
    fields = base(layers=len(layer_pattern)).config.to_dict()
    for key in ("model_type", "architectures", "transformers_version"):
        fields.pop(key, None)
    config = HYBRID_CONFIGS[arch](**fields, layer_pattern=layer_pattern, mamba=mamba)
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(config).eval()
    strengthen(model, seed)
    randomize_norms(model, seed)
    return model


def strengthen(hf_model: torch.nn.Module, seed: int = 0) -> None:
    """Weights whose outputs are O(1). With transformers' std-0.02 initialisation a Mamba mixer
    adds ~1e-4 to the residual stream, under the tests' tolerances. Matrices get std
    1/sqrt(fan-in); the Mamba mixers (names with "mamba") also get decays A = -exp(A_log) in
    (-1, -0.22), steps softplus(dt bias) in (0.05, 0.31), D ~ N(0, 1) and biases ~ N(0, 0.3)."""
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, param in hf_model.named_parameters():
            if "mamba" not in name:
                if param.dim() == 2:
                    param.normal_(0, param.shape[1] ** -0.5, generator=generator)
            elif name.endswith("A_log"):
                param.copy_(torch.rand(param.shape, generator=generator) * 1.5 - 1.5)
            elif name.endswith(("dt_proj.bias", "dt_bias")):
                param.copy_(torch.rand(param.shape, generator=generator) * 2 - 3)
            elif name.endswith(".D"):
                param.normal_(0, 1, generator=generator)
            elif param.dim() >= 2:
                param.normal_(0, param.shape[-1] ** -0.5, generator=generator)
            else:
                param.normal_(0, 0.3, generator=generator)


def cuda_twin_logits_and_grads(monkeypatch, make, env: str, values: tuple[str, str]):
    """Our CUDA twin of a tiny transformers model (norms randomised, no TF32), run once with
    environment variable `env` at each of `values`: [(logits, parameter gradients, the names
    of the logits' backward nodes)] each."""
    from megatron_mamba.runtime import init_runtime
    from tests.helpers.autograd_graph import autograd_nodes

    init_runtime(seed=0)
    torch.backends.cuda.matmul.allow_tf32 = False
    hf = make()
    randomize_norms(hf)
    ours, _ = native_twin(hf)
    ours = ours.cuda()
    tokens = torch.randint(0, VOCAB, (2, 32), device="cuda")
    results = []
    for value in values:
        monkeypatch.setenv(env, value)
        ours.zero_grad()
        logits = ours(tokens, None, None)[..., :VOCAB]
        nodes = autograd_nodes(logits)
        logits.square().mean().backward()
        grads = [p.grad.clone() for p in ours.parameters() if p.grad is not None]
        results.append((logits.detach(), grads, nodes))
    return results


def assert_same_logits_and_grads(results) -> None:
    """The two runs of `cuda_twin_logits_and_grads` agree (fp32: one rounding apart)."""
    (want, want_grads, _), (got, got_grads, _) = results
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    for g, w in zip(got_grads, want_grads, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-5)
