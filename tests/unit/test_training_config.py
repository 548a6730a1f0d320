"""LR schedule against its closed form, weight-decay groups, and config validation."""

import math

import pytest
import torch

from megatron_mamba.config import ParallelConfig
from megatron_mamba.models.build import build_model
from megatron_mamba.models.presets import preset
from megatron_mamba.training.config import TrainConfig
from megatron_mamba.training.ddp import wrap_ddp
from megatron_mamba.training.optimizer import build_optimizer
from megatron_mamba.training.run_config import RunConfig
from megatron_mamba.training.schedule import build_scheduler


def closed_form(step, peak, floor, warmup, decay, style):
    if warmup and step <= warmup:
        return peak * step / warmup
    if style == "constant":
        return peak
    if step > decay:
        return floor
    ratio = (step - warmup) / (decay - warmup)
    coeff = 0.5 * (1 + math.cos(math.pi * ratio)) if style == "cosine" else 1 - ratio
    return floor + coeff * (peak - floor)


@pytest.mark.parametrize("style", ["cosine", "linear", "constant"])
def test_lr_follows_warmup_then_decay_to_min_lr(style):
    train = TrainConfig(
        learning_rate=3e-4,
        min_lr=3e-5,
        lr_scheduler_type=style,
        warmup_ratio=0.1,
        lr_decay_steps=80,
        weight_decay=0.1,
    )
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(2))], lr=0.0)
    scheduler = build_scheduler(optimizer, train, total_steps=100)
    lrs = [optimizer.param_groups[0]["lr"]]
    for _ in range(100):
        scheduler.step(1)
        lrs.append(optimizer.param_groups[0]["lr"])
    for step in (0, 5, 8, 9, 45, 79, 80, 81, 100):  # warmup: 0.1 of the 80 decay steps
        expected = closed_form(step, 3e-4, 3e-5, 8, 80, style)
        assert lrs[step] == pytest.approx(expected, rel=1e-12, abs=1e-15), step
    # Resume: a fresh scheduler restored from the state dict continues identically.
    optimizer2 = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(2))], lr=0.0)
    restored = build_scheduler(optimizer2, train, total_steps=100)
    state = build_scheduler(optimizer2, train, 100).state_dict() | {"num_steps": 45}
    restored.load_state_dict(state)
    restored.step(1)
    assert optimizer2.param_groups[0]["lr"] == pytest.approx(lrs[46], rel=1e-12)


def test_lr_of_cosine_floor_is_calds_transformers_cosine_raised_to_min_lr():
    """CALD's retrain_mamba_distill.py: transformers' cosine schedule over lr_decay_steps with
    int(0.03 · lr_decay_steps) warmup steps, each LR factor raised to min_lr / lr, and min_lr
    from lr_decay_steps on."""
    from transformers import get_cosine_schedule_with_warmup

    peak, floor, decay, total = 3e-4, 3e-5, 400, 500
    train = TrainConfig(
        learning_rate=peak,
        min_lr=floor,
        lr_scheduler_type="cosine_floor",
        warmup_ratio=0.03,
        lr_decay_steps=decay,
    )
    assert train.warmup(total) == int(0.03 * decay) == 12
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(2))], lr=0.0)
    scheduler = build_scheduler(optimizer, train, total)
    reference = get_cosine_schedule_with_warmup(
        torch.optim.AdamW([torch.nn.Parameter(torch.zeros(2))], lr=peak), 12, decay
    ).lr_lambdas[0]
    for step in range(total + 1):
        cald = max(reference(step), floor / peak) if step < decay else floor / peak
        assert optimizer.param_groups[0]["lr"] == pytest.approx(peak * cald, rel=1e-12), step
        scheduler.step(1)
    assert scheduler.state_dict()["lr_decay_style"] == "cosine_floor"


def test_checkpoint_interval_may_be_a_fraction():
    assert TrainConfig(checkpointing_steps=0.01).checkpoint_interval(5000) == 50
    assert TrainConfig(checkpointing_steps=0.01).checkpoint_interval(22880) == 228  # CALD's
    assert TrainConfig(checkpointing_steps=200).checkpoint_interval(5000) == 200
    assert TrainConfig().checkpoint_interval(5000) is None


def _trainer_optimizer(model, mamba_only: bool):
    """The optimizer the trainer builds (megatron's, with our weight-decay overrides)."""
    train = TrainConfig(mixed_precision="no", weight_decay=0.1, weight_decay_mamba_only=mamba_only)
    run = RunConfig(preset="tiny-gpt-neox", train=train)  # the preset only satisfies RunConfig
    return build_optimizer(model, wrap_ddp(model), run), train


@pytest.mark.parametrize("mamba_only", [False, True])
def test_the_optimizer_decays_what_cald_decays(runtime, mamba_only):
    cfg = preset("tiny-gpt-neox", num_layers=4, layer_pattern="AMSA")
    model = build_model(cfg, ParallelConfig())
    optimizer, _ = _trainer_optimizer(model, mamba_only)
    names = {id(p): n for n, p in model.named_parameters()}
    decayed, kept = set(), set()
    for group in optimizer.param_groups:
        (decayed if group["wd_mult"] > 0 else kept).update(names[id(p)] for p in group["params"])
    assert decayed | kept == set(names.values()) and not decayed & kept
    for name in names.values():
        is_bias_or_norm = name.endswith("bias") or "norm" in name
        in_mamba = name.startswith(("decoder.layers.1.mixer.", "decoder.layers.2.mixer."))
        expected = not is_bias_or_norm and (in_mamba or not mamba_only)
        assert (name in decayed) == expected, name
    assert "decoder.layers.1.mixer.A_log" in decayed  # as CALD: only biases and norms are spared
    assert "decoder.layers.2.mixer.dt_bias" in kept and "decoder.layers.2.mixer.norm.weight" in kept


def test_no_decay_group_stays_undecayed_under_the_scheduler(runtime):
    model = build_model(preset("tiny-gpt-neox", layer_pattern="MA"), ParallelConfig())
    optimizer, train = _trainer_optimizer(model, mamba_only=True)
    build_scheduler(optimizer, train, 10).step(1)
    decay_by_mult = {(g["wd_mult"], g["weight_decay"]) for g in optimizer.param_groups}
    assert decay_by_mult == {(1.0, 0.1), (0.0, 0.0)}


@pytest.mark.parametrize(
    "field,value,match",
    [
        ("learning_rate", 0.0, "learning_rate=0.0 must be positive"),
        ("learning_rate", math.inf, "learning_rate=inf must be positive and finite"),
        ("min_lr", 1.0, r"min_lr=1.0 must lie in \[0, learning_rate"),
        ("min_lr", math.nan, r"min_lr=nan must lie in \[0, learning_rate"),
        ("weight_decay", -0.1, "weight_decay=-0.1 must be non-negative"),
        ("adam_beta1", 1.5, r"adam_beta1=1.5 must be in \[0, 1\)"),
        ("adam_beta2", -1.0, r"adam_beta2=-1.0 must be in \[0, 1\)"),
        ("adam_beta2", 1.0, r"adam_beta2=1.0 must be in \[0, 1\)"),
        ("adam_eps", 0.0, "adam_eps=0.0 must be positive"),
        ("clip_grad_norm", -1.0, "clip_grad_norm=-1.0 must be non-negative"),
        ("log_every", 0, "log_every=0 must be a positive integer"),
        ("max_bad_steps", 0, "max_bad_steps=0 must be a positive integer"),
        ("loss_scale_window", 0, "loss_scale_window=0 must be a positive integer"),
        ("initial_loss_scale", math.inf, "initial_loss_scale=inf must be finite"),
        ("max_steps", 0, "max_steps=0 must be a positive integer"),
        ("max_steps", -3, "max_steps=-3 must be a positive integer"),
        ("lr_decay_steps", 0, "lr_decay_steps=0 must be a positive integer"),
        ("seed", -1, r"seed=-1 must be an integer in \[0, 2\*\*32\)"),
        ("lr_scheduler_type", "step", "lr_scheduler_type 'step' is unknown"),
        ("warmup_ratio", 1.5, "warmup_ratio=1.5"),
        ("gradient_accumulation_steps", 0, "gradient_accumulation_steps=0"),
        ("checkpointing_steps", -1, "checkpointing_steps=-1 must be a whole number"),
        ("checkpointing_steps", 2.5, "checkpointing_steps=2.5 must be a whole number"),
        ("checkpointing_steps", math.nan, "checkpointing_steps=nan must be a whole number"),
        ("checkpointing_steps", math.inf, "checkpointing_steps=inf must be a whole number"),
        ("keep_last_checkpoints", 0, "keep_last_checkpoints=0 must be >= 1"),
        ("exit_interval", 0, "exit_interval=0 must be a positive integer"),
        ("mixed_precision", "fp8", "mixed_precision 'fp8' is unknown"),
        ("report_to", ("tensorboard",), "unknown sink"),
    ],
)
def test_bad_training_values_fail_clearly(field, value, match):
    with pytest.raises(ValueError, match=match):
        TrainConfig(**{field: value})


def test_clipping_may_be_disabled_and_checkpoint_steps_be_whole_floats():
    assert TrainConfig(clip_grad_norm=0.0).clip_grad_norm == 0.0
    assert TrainConfig(checkpointing_steps=200.0).checkpoint_interval(5000) == 200


@pytest.mark.parametrize(
    "settings,match",
    [
        (dict(warmup_ratio=0.5, warmup_steps=3), "warmup_steps=3 and warmup_ratio=0.5 are both"),
        (dict(warmup_steps=100, lr_decay_steps=10), "warmup_steps=100 must be below lr_decay"),
        (dict(warmup_steps=10, lr_decay_steps=10), "warmup_steps=10 must be below lr_decay"),
        (
            dict(mixed_precision="fp16", fp32_master_weights=False),
            "fp32_master_weights=false needs mixed_precision=bf16, not fp16",
        ),
        (
            dict(mixed_precision="no", fp32_master_weights=False),
            "fp32_master_weights=false needs mixed_precision=bf16, not no",
        ),
        (
            dict(fp32_master_weights=False, use_distributed_optimizer=True),
            "fp32_master_weights=false cannot be combined with use_distributed_optimizer=true",
        ),
    ],
)
def test_warmup_settings_that_contradict_are_refused(settings, match):
    with pytest.raises(ValueError, match=match):
        TrainConfig(**settings)


def test_warmup_beyond_decay_is_fine_for_a_constant_schedule():
    train = TrainConfig(warmup_steps=10, lr_decay_steps=5, lr_scheduler_type="constant")
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(2))], lr=0.0)
    build_scheduler(optimizer, train, total_steps=20)


@pytest.mark.parametrize("ratio,total,expected", [(0.29, 100, 29), (0.01, 50, 1), (0.1, 100, 10)])
def test_warmup_ratio_rounds_up(ratio, total, expected):
    assert TrainConfig(warmup_ratio=ratio).warmup(total) == expected


def test_warmup_ratio_is_of_lr_decay_steps_when_set():
    assert TrainConfig(warmup_ratio=0.03, lr_decay_steps=12000).warmup(11440) == 360


def test_a_warmup_ratio_ending_after_lr_decay_steps_is_refused():
    """Refused by the config, so that `--dry-run` catches it (it depends on no run length)."""
    with pytest.raises(ValueError, match="warmup_ratio=0.5 of lr_decay_steps=1 gives 1"):
        TrainConfig(warmup_ratio=0.5, lr_decay_steps=1)
    with pytest.raises(ValueError, match=r"warmup_ratio=0.95 of lr_decay_steps=10 gives 10"):
        TrainConfig(warmup_ratio=0.95, lr_decay_steps=10)  # 9.5, rounded up
    assert TrainConfig(warmup_ratio=0.95, lr_decay_steps=10, lr_scheduler_type="constant")


def test_init_from_attention_refuses_mixers_initialised_from_attention(tmp_path):
    from megatron_mamba.config_io import ConfigError, load
    from megatron_mamba.training.run_config import RunConfig

    (tmp_path / "teacher.pt").write_bytes(b"")
    overrides = [
        "preset=tiny-gpt-neox",
        "model.layer_pattern=MA",
        "model.mamba.layout=attention",
        "model.mamba.init=attention",
        f"train.init_from_attention={tmp_path / 'teacher.pt'}",
    ]
    with pytest.raises(ConfigError, match="init_from_attention copies shared tensors only"):
        load(RunConfig, None, overrides)


def test_a_global_batch_size_sets_the_accumulation_for_any_data_parallel_size():
    from megatron_mamba.config_io import ConfigError

    train = TrainConfig(per_device_train_batch_size=8, global_batch_size=128)
    assert [train.accumulation(dp) for dp in (1, 2, 8, 16)] == [16, 8, 2, 1]
    with pytest.raises(ConfigError, match="global_batch_size=128 is not a multiple of"):
        train.accumulation(3)
    with pytest.raises(ValueError, match="are both set"):
        TrainConfig(global_batch_size=128, gradient_accumulation_steps=4)
