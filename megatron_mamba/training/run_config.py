"""The whole run's config: model (a preset and/or explicit fields), parallel layout, training
and data. Read by `python -m megatron_mamba.train --config run.yaml key=value ...`."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from megatron_mamba.config import ModelConfig, ParallelConfig
from megatron_mamba.config_io import ConfigError, build
from megatron_mamba.data.indexed import dataset_prefix
from megatron_mamba.distill.config import DistillConfig
from megatron_mamba.models.build import validate_parallel
from megatron_mamba.models.presets import preset_fields
from megatron_mamba.training.checkpoint import (
    CheckpointError,
    find_checkpoint,
    read_model_config,
)
from megatron_mamba.training.config import TrainConfig
from megatron_mamba.training.dpo import DPOConfig

DATA_KINDS = ("pythia", "corpus", "chat", "preference")


@dataclass
class DataConfig:
    kind: Literal["pythia", "corpus", "chat", "preference"] = "pythia"
    """"pythia": fixed-length items of a .bin/.idx in training order (the pre-shuffled Pile
    layout); "corpus": documents of .bin/.idx pairs (data_tools/preprocess_data.py output), one
    or a blend, joined and cut into items by megatron's GPTDataset (shuffled by train.seed);
    "chat": conversations for SFT or distillation, loss on assistant tokens;
    "preference": prompt/chosen/rejected pairs, trained with DPO (data/chat_dataset.py)."""
    path: str = ""
    """.bin/.idx prefix (pythia, corpus), megatron's blend "0.7 prefix_a 0.3 prefix_b" (corpus;
    weighted blends need train.max_train_samples), or .jsonl file (chat, preference)."""
    item_length: int = 2049
    """Tokens per item (sequence length + 1); chat and preference records are padded or
    truncated to it."""
    tokenizer: str = ""
    """The tokenizer directory: its end-of-document id joins corpus documents; its chat
    template renders chat and preference records."""
    shuffle: bool = True
    """chat, preference: a new seeded permutation of the records each epoch."""
    insert_empty_system: bool = False
    """chat, preference: an empty system message first where a record has none and the chat
    template knows the role (alignment-handbook's auto_insert_empty_system_msg, as Zephyr and
    MambaInLlama's SFT and DPO trained)."""
    pack: bool = False
    """chat: join the conversations (in a seeded order) into one stream cut into full rows of
    item_length, as TRL's SFT packing in alignment-handbook's and MambaInLlama's recipes, instead
    of one padded conversation per row (no padding computed; a row's targets may run from one
    conversation into the next, as there)."""
    train_on: Literal["assistant", "all"] = "assistant"
    """chat: the targets that carry loss: "assistant" tokens, or "all" (but padding; packed SFT
    in alignment-handbook and MambaInLlama trains on every token)."""
    max_prompt_length: int | None = None
    """preference: where a prompt and its longer response exceed item_length, the prompt keeps
    its last max_prompt_length tokens and, if still too long, the responses their first
    item_length − max_prompt_length (TRL's DPOTrainer with truncation_mode keep_end, as
    MambaInLlama's DPO ran it: 512 of 1024). Unset: every sequence is cut from the right."""
    allow_short_bin: bool = False
    first_item: int = 0
    """Items to skip at the start of the data (non-negative), e.g. to continue a data order."""
    valid_path: str = ""
    """.bin/.idx prefix of the held-out set for periodic validation (train.eval_interval):
    items of item_length tokens as they are, other documents as one stream cut into windows."""
    valid_windows: int = 64
    """Held-out windows per validation (rounded down to a multiple of micro-batch × DP)."""

    def __post_init__(self) -> None:
        if self.item_length < 2:
            raise ValueError(f"item_length={self.item_length} must be at least 2")
        if self.valid_windows < 1:
            raise ValueError(f"valid_windows={self.valid_windows} must be positive")
        if self.first_item < 0:
            raise ValueError(f"first_item={self.first_item} must be non-negative")
        if self.kind not in DATA_KINDS:
            raise ValueError(f"data kind {self.kind!r} is unknown; expected one of {DATA_KINDS}")
        if (self.pack or self.train_on != "assistant") and self.kind != "chat":
            raise ValueError(f"pack and train_on apply to chat data only, not kind {self.kind!r}")
        if self.train_on not in ("assistant", "all"):
            raise ValueError(f"train_on={self.train_on!r} is unknown; expected assistant or all")
        if self.max_prompt_length is not None:
            if self.kind != "preference":
                raise ValueError(
                    f"max_prompt_length applies to preference data only, not kind {self.kind!r}"
                )
            if not 0 < self.max_prompt_length < self.item_length:
                raise ValueError(
                    f"max_prompt_length={self.max_prompt_length} must be positive and below "
                    f"item_length={self.item_length}"
                )
        # a .bin or .idx named stands for its prefix (in a corpus blend, each one named)
        if self.kind == "corpus" and len(self.path.split()) > 1:
            self.path = " ".join(map(dataset_prefix, self.path.split()))
        elif self.kind in ("pythia", "corpus"):
            self.path = dataset_prefix(self.path)
        self.valid_path = dataset_prefix(self.valid_path)
        if self.kind != "pythia" and not self.tokenizer:
            raise ValueError(
                f"data.kind={self.kind} needs data.tokenizer (the directory of the tokenizer "
                "the data was made with)"
            )


@dataclass
class RunConfig:
    preset: str | None = None
    """A model preset (models/presets.py); `model` fields override it. Without a preset or
    model fields, the model is the one train.init_from's checkpoint records."""
    model: dict[str, Any] = field(default_factory=dict)
    """ModelConfig fields: the whole model, or overrides of the preset's (model.mamba merged
    key by key); type-checked as a model section either way."""
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    data: DataConfig = field(default_factory=DataConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    dpo: DPOConfig = field(default_factory=DPOConfig)
    """Used when data.kind is preference."""

    def __post_init__(self) -> None:
        weights = {  # where a run reads weights: each must be there before anything starts
            "train.init_from": self.train.init_from,
            "train.init_from_attention": self.train.init_from_attention,
            "distill.teacher": self.distill.teacher,
            "dpo.reference": self.dpo.reference,
        }
        for setting, path in weights.items():
            if path and not Path(path).exists():
                raise ConfigError(f"{setting}={path} does not exist")
            if path and Path(path).is_dir():
                try:
                    find_checkpoint(path, Path(path))
                except CheckpointError as error:
                    raise ConfigError(f"{setting}: {error}") from None
        model = self.model_config()  # fail early, naming the bad model field
        try:  # and a layout the model cannot be split into, before any process starts
            validate_parallel(model, self.parallel)
        except ValueError as error:
            raise ConfigError(f"parallel: {error}") from None
        if self.train.eval_interval and not self.data.valid_path:
            raise ValueError(
                f"train.eval_interval={self.train.eval_interval} needs a held-out set: set "
                "data.valid_path to a .bin/.idx prefix"
            )
        if self.train.init_from_attention and model.mamba.init == "attention":
            raise ValueError(
                "model.mamba.init=attention needs the student's weights made from the attention "
                "model's beforehand (train.init_from); train.init_from_attention copies shared "
                "tensors only, leaving the Mamba mixers fresh"
            )

        if self.train.trainable == "mamba" and set(model.mixers) == {"attention"}:
            raise ValueError(
                "train.trainable=mamba, but the layer pattern has no Mamba layer; nothing "
                "would be trained"
            )
        if self.data.kind == "preference":
            if not (self.dpo.reference or self.train.init_from):
                raise ValueError(
                    "data.kind=preference (DPO) needs a reference model: set train.init_from "
                    "(the SFT model, also the reference) or dpo.reference"
                )
            if self.distill.teacher:
                raise ValueError("DPO (data.kind=preference) does not take a distill.teacher")

    def model_config(self) -> ModelConfig:
        """The preset with `model` over it, `model` alone, or what train.init_from records."""
        if self.preset is not None:
            return build(ModelConfig, preset_fields(self.preset, self.model), "model")
        if self.model:
            return build(ModelConfig, self.model, "model")
        init_from = self.train.init_from
        if not init_from:
            raise ConfigError(
                "no model: set preset, the model.* fields (arch, num_layers, ...) or "
                "train.init_from (a checkpoint, which records its model)"
            )
        if not Path(init_from).is_dir():
            raise ConfigError(
                f"train.init_from={init_from} is a file of tensors, which does not record the "
                "model; set preset or the model.* fields too"
            )
        try:
            return read_model_config(Path(init_from))
        except CheckpointError as error:
            raise ConfigError(f"train.init_from: {error}") from None
