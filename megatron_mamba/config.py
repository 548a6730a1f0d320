"""Typed, validated configuration. Each field's docstring says what it means.

Bad values fail in `__post_init__` with one sentence naming the value and what was expected, before
any weight is built. The megatron `TransformerConfig` is derived from these in one place
(`megatron_mamba.models.build.to_transformer_config`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

from megatron_mamba.models.layer_pattern import mixer_names, parse_layer_pattern

Arch = Literal["gpt_neox", "llama"]
Precision = Literal["fp32", "bf16", "fp16"]


MambaLayout = Literal["classic", "attention"]
MambaInit = Literal["fresh", "attention"]


@dataclass
class MambaConfig:
    """Shape and initialisation of the Mamba mixers a layer pattern puts in place of attention."""

    layout: MambaLayout = "classic"
    """"classic": mamba_ssm / transformers shapes (CALD's mixer); "attention": shaped like the
    attention it replaces, as MambaInLlama (d_inner = heads·head_dim, x and B as wide as V and K,
    C as wide as Q, repeated over each KV group)."""
    init: MambaInit = "fresh"
    """"fresh" (S4D-real A, log-uniform dt) or "attention": x ← V, B ← K, C ← Q, out ← O, the
    rest fresh. Applied when an attention checkpoint is converted; needs layout "attention"."""
    d_state: int | None = None
    """SSM state size. None: 16 for mamba1; for mamba2 128 (classic) or head_dim (attention)."""
    d_conv: int = 4
    """Causal convolution width: 2, 3 or 4, the widths causal_conv1d's GPU kernel supports."""
    expand: int = 2
    """Classic layout only: d_inner = expand · hidden_size."""
    d_inner: int | None = None
    """Classic layout only: an explicit d_inner instead of expand · hidden_size (CALD's Pythia-1b
    student keeps mamba-2.8b's 5120)."""
    dt_rank: int | None = None
    """Mamba1's low-rank dt projection; None means ceil(hidden_size / 16)."""
    head_dim: int = 64
    """Classic mamba2 only: channels per SSM head (the attention layout uses the attention's)."""
    groups: int = 1
    """Classic mamba2 only: groups sharing one B and C (the attention layout uses the KV heads)."""
    chunk_size: int = 256
    """Mamba2's SSD chunk length."""
    conv_bias: bool = True
    proj_bias: bool | None = None
    """Biases on in/out projections; None: as the attention's when init is "attention", else off."""
    dt_min: float = 0.001
    dt_max: float = 0.1
    dt_init_floor: float = 1e-4
    dt_scale: float = 1.0
    """Mamba1: dt_proj weights are uniform in ±dt_scale / sqrt(dt_rank)."""
    a_init_range: tuple[float, float] = (1.0, 16.0)
    """Mamba2: A drawn uniformly from this range (mamba_ssm's default)."""
    norm_eps: float = 1e-5
    """Mamba2's gated RMSNorm."""

    def __post_init__(self) -> None:
        if self.layout not in ("classic", "attention"):
            raise ValueError(
                f"mamba layout {self.layout!r} is unknown; expected classic or attention"
            )
        if self.init not in ("fresh", "attention"):
            raise ValueError(f"mamba init {self.init!r} is unknown; expected fresh or attention")
        if self.init == "attention" and self.layout != "attention":
            raise ValueError(
                "mamba init 'attention' copies Q/K/V/O weights, which needs layout 'attention', "
                f"got layout {self.layout!r}"
            )
        if self.layout == "attention" and self.d_inner is not None:
            raise ValueError(
                f"mamba d_inner={self.d_inner} applies to layout 'classic' only; the attention "
                "layout's d_inner is num_attention_heads · head_dim (leave d_inner unset)"
            )
        for name in ("d_state", "d_conv", "expand", "d_inner", "dt_rank", "head_dim", "groups"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ValueError(f"mamba {name}={value!r} must be a positive integer")
        if self.d_conv not in (2, 3, 4):
            raise ValueError(
                f"mamba d_conv={self.d_conv} must be 2, 3 or 4 (the convolution widths "
                "causal_conv1d supports on GPU)"
            )
        if not isinstance(self.chunk_size, int) or self.chunk_size < 1:
            raise ValueError(f"mamba chunk_size={self.chunk_size!r} must be a positive integer")
        if not 0 < self.dt_min <= self.dt_max < math.inf:
            raise ValueError(
                f"mamba dt range ({self.dt_min}, {self.dt_max}) must be 0 < min ≤ max, finite"
            )
        for name in ("dt_init_floor", "dt_scale"):  # NaN or inf would give NaN dt weights
            if not 0 <= getattr(self, name) < math.inf:
                raise ValueError(f"mamba {name}={getattr(self, name)} must be finite and ≥ 0")
        low, high = self.a_init_range
        if not 0 < low <= high < math.inf:
            raise ValueError(
                f"mamba a_init_range {self.a_init_range} must be 0 < low ≤ high, finite"
            )
        if not 0 < self.norm_eps < math.inf:
            raise ValueError(f"mamba norm_eps={self.norm_eps} must be positive and finite")


@dataclass
class ModelConfig:
    """The shape of a GPTNeoX (Pythia) or Llama/Mistral model and its per-layer mixers."""

    arch: Arch
    """Block family: "gpt_neox" (LayerNorm, GeLU MLP, biases) or "llama" (RMSNorm, SwiGLU)."""
    num_layers: int
    hidden_size: int
    num_attention_heads: int
    ffn_hidden_size: int
    vocab_size: int
    """The tokenizer's vocabulary; the embedding is padded to `padded_vocab_size(tp)`."""
    num_query_groups: int | None = None
    """Key/value heads (GQA), dividing num_attention_heads; None means one per attention head."""
    head_dim: int | None = None
    """Per-head width; None means hidden_size // num_attention_heads."""
    max_position_embeddings: int = 2048
    norm_eps: float = 1e-5
    """Epsilon of the block norms (positive)."""
    rotary_percent: float = 1.0
    """Fraction of each head that is rotated (Pythia: 0.25)."""
    rotary_base: float = 10000.0
    rope_scaling_factor: float | None = None
    """Llama-3.1-style RoPE scaling factor (low/high freq factors 1/4, original length 8192);
    positive, None means no scaling."""
    parallel_residual: bool = True
    """GPTNeoX only: x + mixer(ln1(x)) + mlp(ln2(x)) instead of the sequential residual."""
    tie_embeddings: bool = False
    sliding_window: int | None = None
    """Mistral's attention window in tokens (None: none); longer sequences are refused by the
    SDPA core."""
    layer_pattern: str | None = None
    """One symbol per layer ("A" attention, "M" mamba1, "S" mamba2); None means all attention."""
    mamba: MambaConfig = field(default_factory=MambaConfig)
    """The Mamba mixers' shape and initialisation (used by "M" and "S" layers)."""
    make_vocab_size_divisible_by: int = 128
    """The embedding's rows are padded to a multiple of this × the tensor-parallel size."""
    hidden_dropout: float = 0.0
    """Dropout probability in [0, 1), as attention_dropout."""
    attention_dropout: float = 0.0

    def __post_init__(self) -> None:
        if self.arch not in ("gpt_neox", "llama"):
            raise ValueError(f"arch {self.arch!r} is unknown; expected 'gpt_neox' or 'llama'")
        for name in (
            "num_layers",
            "hidden_size",
            "num_attention_heads",
            "ffn_hidden_size",
            "vocab_size",
            "max_position_embeddings",
            "make_vocab_size_divisible_by",
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}={value!r} must be a positive integer")
        for name in ("num_query_groups", "head_dim", "sliding_window"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ValueError(f"{name}={value!r} must be a positive integer (or unset)")
        for name in ("norm_eps", "rotary_base", "rope_scaling_factor"):
            value = getattr(self, name)
            if value is not None and not 0 < value < math.inf:
                raise ValueError(f"{name}={value} must be positive and finite")
        for name in ("hidden_dropout", "attention_dropout"):
            if not 0 <= getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be a probability in [0, 1)")
        if self.num_query_groups is None:
            self.num_query_groups = self.num_attention_heads
        if self.num_attention_heads % self.num_query_groups:
            raise ValueError(
                f"num_attention_heads={self.num_attention_heads} is not a multiple of "
                f"num_query_groups={self.num_query_groups}"
            )
        if self.head_dim is None:
            if self.hidden_size % self.num_attention_heads:
                raise ValueError(
                    f"hidden_size={self.hidden_size} is not divisible by "
                    f"num_attention_heads={self.num_attention_heads}; set head_dim"
                )
            self.head_dim = self.hidden_size // self.num_attention_heads
        if not 0.0 < self.rotary_percent <= 1.0:
            raise ValueError(f"rotary_percent={self.rotary_percent} must be in (0, 1]")
        if self.arch == "llama" and self.parallel_residual:
            self.parallel_residual = False  # Llama blocks are always sequential
        self.layer_pattern = parse_layer_pattern(self.layer_pattern, self.num_layers)
        if "A" in self.layer_pattern:
            self._check_rotary_dim()
        if isinstance(self.mamba, dict):
            self.mamba = MambaConfig(**self.mamba)

    def _check_rotary_dim(self) -> None:
        """megatron and transformers rotate int(head_dim · rotary_percent) rounded up to even
        channels: an odd count rotates one channel more than asked (or fails on an odd head) and
        zero leaves attention without positions."""
        rotary_dim = int(self.head_dim * self.rotary_percent)
        if rotary_dim < 2 or rotary_dim % 2:
            raise ValueError(
                f"rotary_percent={self.rotary_percent} of head_dim={self.head_dim} rotates "
                f"{rotary_dim} channels; RoPE rotates channel pairs, so it must be even and ≥ 2"
            )

    @property
    def mixers(self) -> list[str]:
        """The mixer name of each layer, from the pattern."""
        return mixer_names(self.layer_pattern)

    def padded_vocab_size(self, tensor_parallel: int) -> int:
        """Vocabulary rounded up so each TP rank holds an equal, aligned slice."""
        multiple = self.make_vocab_size_divisible_by * tensor_parallel
        return -(-self.vocab_size // multiple) * multiple


@dataclass
class ParallelConfig:
    """How the model is split across processes; data parallelism takes the rest of the world."""

    tensor: int = 1
    pipeline: int = 1
    sequence_parallel: bool = False
    """Split norms/dropout along the sequence across TP ranks (needs tensor > 1)."""
    first_stage_layers: int | None = None
    """Layers on the first pipeline stage when the split is uneven (pipeline > 1 only); None
    means even."""
    last_stage_layers: int | None = None
    """As first_stage_layers, for the last stage."""

    def __post_init__(self) -> None:
        for name in ("tensor", "pipeline"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}-parallel size {value!r} must be a positive integer")
        for name in ("first_stage_layers", "last_stage_layers"):
            value = getattr(self, name)
            if value is None:
                continue
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}={value!r} must be a positive integer")
            if self.pipeline == 1:
                raise ValueError(
                    f"{name}={value} sizes a pipeline stage, but pipeline=1 has a single stage; "
                    "leave it unset or set pipeline > 1"
                )
        if self.sequence_parallel and self.tensor == 1:
            raise ValueError("sequence_parallel=True needs tensor-parallel size > 1, got 1")


@dataclass
class RunPrecision:
    """Numerics of a run."""

    dtype: Precision = "fp32"
    recompute: Literal["none", "full", "selective"] = "none"
    """Activation recomputation: none, every layer ("full"), or the attention core only."""

    def __post_init__(self) -> None:
        if self.dtype not in ("fp32", "bf16", "fp16"):
            raise ValueError(f"precision {self.dtype!r} is unknown; expected fp32, bf16 or fp16")
        if self.recompute not in ("none", "full", "selective"):
            raise ValueError(
                f"recompute {self.recompute!r} is unknown; expected none, full or selective"
            )


__all__ = ["MambaConfig", "ModelConfig", "ParallelConfig", "RunPrecision"]
