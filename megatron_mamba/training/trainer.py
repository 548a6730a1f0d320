"""The training loop: model, data, optimizer and schedule built from a RunConfig, then steps.

One step = `gradient_accumulation_steps` micro-batches (or as many as `global_batch_size` makes)
through megatron's pipeline schedule on each data-parallel replica, one optimizer step
(megatron's optimizer: gradient clipping, loss scaling under fp16), one scheduler step. A step
whose loss or (fp32/bf16) gradients are not finite is skipped with a warning, its update not
applied; too many in a row stop the run with an error (training/bad_steps.py). Checkpoints
(training/checkpoint.py) are saved every `checkpointing_steps`, at `exit_interval`, at the
`keep_checkpoint_steps` and at the end, skipped steps included, but never of non-finite weights;
a run resumed from one continues exactly. Nothing but corpus data's index cache (and a
checkpoint an interrupted save had set aside, put back: training/resume.py) is written into the
run's directory before the model, data and checkpoint to resume have been set up.
"""

from __future__ import annotations

import dataclasses
import pickle
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import torch
from megatron.core import parallel_state as ps
from megatron.core.pipeline_parallel import get_forward_backward_func

from megatron_mamba.config import RunPrecision
from megatron_mamba.config_io import ConfigError, dump, to_dict
from megatron_mamba.data.batches import TokenBatch, padded_length
from megatron_mamba.data.chat_dataset import ChatDataset, PreferenceDataset
from megatron_mamba.data.corpus import CorpusSamples, HFTokenizerInfo
from megatron_mamba.data.held_out import HeldOutWindows
from megatron_mamba.data.preprocess import load_tokenizer
from megatron_mamba.data.pythia import DataOrder, PythiaPreshuffled
from megatron_mamba.distill.objective import Distillation
from megatron_mamba.evaluation.perplexity import held_out_loss
from megatron_mamba.models.build import build_model
from megatron_mamba.models.size import training_flops_per_token
from megatron_mamba.parallel.shards import load_full_state
from megatron_mamba.runtime import ParallelSizes, init_runtime
from megatron_mamba.training.bad_steps import BadSteps, TrainingError, all_finite, why_skip
from megatron_mamba.training.checkpoint import (
    CHECKPOINTS,
    CheckpointError,
    find_checkpoint,
    load_checkpoint,
    load_weights,
    save_checkpoint,
    saved_progress,
)
from megatron_mamba.training.cuda_graph import (
    GraphedForwardBackward,
    graph_refusal,
    leave_the_default_stream,
)
from megatron_mamba.training.ddp import wrap_ddp
from megatron_mamba.training.dpo import PreferenceOptimisation
from megatron_mamba.training.metrics import MetricsLogger
from megatron_mamba.training.objective import LanguageModelling
from megatron_mamba.training.optimizer import (
    MIN_LOSS_SCALE,
    build_optimizer,
    grads_prepared_now,
)
from megatron_mamba.training.param_groups import freeze_all_but_mamba
from megatron_mamba.training.reference_logps import reference_logps
from megatron_mamba.training.resume import agreed_resume
from megatron_mamba.training.run_config import RunConfig
from megatron_mamba.training.schedule import build_scheduler
from megatron_mamba.training.throughput import mfu, peak_flops

_DTYPE = {"no": "fp32", "bf16": "bf16", "fp16": "fp16"}


def _total_steps(cfg, order: DataOrder, available: int) -> int:
    """The run's length: train.max_steps when set, which the data (with max_train_samples and
    num_train_epochs) must then provide; else every whole global batch of it."""
    steps = order.steps(available)
    if steps == 0:
        limit = (
            f" (train.max_train_samples={cfg.max_train_samples})" if cfg.max_train_samples else ""
        )
        raise TrainingError(
            f"no training step fits: {order.samples(available)} items{limit} from item "
            f"{order.first_item} of {available}, with a global batch of {order.global_batch}"
        )
    if cfg.max_steps is not None and cfg.max_steps > steps:
        limit = f", max_train_samples={cfg.max_train_samples}" if cfg.max_train_samples else ""
        raise TrainingError(
            f"train.max_steps={cfg.max_steps} is more than the data gives: "
            f"{order.steps_per_epoch(available)} steps of {order.global_batch} items per epoch × "
            f"{order.epochs} epoch(s) = {steps} steps ({available} items from item "
            f"{order.first_item}{limit}); lower train.max_steps or raise train.num_train_epochs"
        )
    return steps if cfg.max_steps is None else cfg.max_steps


def _across_pipeline_and_replicas(parts: dict[str, float], device) -> dict[str, float]:
    """Each loss part summed over pipeline stages, averaged over data-parallel replicas."""
    names = sorted(parts)
    t = torch.tensor([parts[name] for name in names], device=device, dtype=torch.float64)
    torch.distributed.all_reduce(t, group=ps.get_pipeline_model_parallel_group())
    torch.distributed.all_reduce(t, group=ps.get_data_parallel_group())
    t /= ps.get_data_parallel_world_size()
    return dict(zip(names, t.tolist(), strict=True))


def train(run: RunConfig) -> list[dict]:
    """Run training; returns the records of its steps (also logged on rank 0), each with
    `skipped` 1 where the update was not applied."""
    cfg = run.train
    rt = init_runtime(ParallelSizes(run.parallel.tensor, run.parallel.pipeline), seed=cfg.seed)
    resume = agreed_resume(run)
    if rt.device.type == "cpu" and cfg.mixed_precision != "no" and cfg.fp32_master_weights:
        raise TrainingError(
            f"train.mixed_precision={cfg.mixed_precision} needs a GPU (megatron's mixed-precision "
            "optimizer keeps CUDA tensors); on CPU use train.mixed_precision=no, or bf16 with "
            "train.fp32_master_weights=false"
        )
    if rt.device.type == "cpu" and cfg.use_distributed_optimizer:
        raise TrainingError(
            "train.use_distributed_optimizer=true needs GPUs (megatron's distributed optimizer "
            "keeps its shards in CUDA buffers); on CPU leave it false"
        )
    if cfg.cuda_graph:
        if refusal := graph_refusal(run, rt.device):
            raise TrainingError(refusal)
        leave_the_default_stream()
    torch.backends.cuda.matmul.allow_tf32 = cfg.use_tf32
    torch.backends.cudnn.allow_tf32 = cfg.use_tf32
    model_cfg = run.model_config()
    output = _output_directory(cfg)
    # The data, held-out set and run length are checked before any model is built.
    seq = run.data.item_length - 1
    micro, accumulation = cfg.per_device_train_batch_size, cfg.accumulation(rt.data_parallel_size)
    held_out = None
    if cfg.eval_interval:  # opened first: corpus data writes its index cache into the run's dir
        held_out = _held_out(run, seq, model_cfg.vocab_size, micro * rt.data_parallel_size)
    data = _training_data(run, model_cfg.vocab_size)
    order = DataOrder(
        global_batch=micro * accumulation * rt.data_parallel_size,
        dp_size=rt.data_parallel_size,
        first_item=run.data.first_item,
        max_train_samples=cfg.max_train_samples,
        epochs=cfg.num_train_epochs,
    )
    total = _total_steps(cfg, order, len(data))
    if rt.is_main:
        for warning in _settings_without_effect(run, model_cfg, total):
            print(f"warning: {warning}", file=sys.stderr, flush=True)
    precision = RunPrecision(_DTYPE[cfg.mixed_precision], recompute=cfg.recompute)
    model = build_model(model_cfg, run.parallel, precision)
    model = model.to(rt.device)
    if cfg.init_from:
        _initialise(model, Path(cfg.init_from), "train.init_from")
    teacher_dtype = run.distill.teacher_precision
    teacher = _frozen_model(
        run,
        _attention_only(model_cfg),
        rt.device,
        run.distill.teacher,
        "distill.teacher",
        teacher_dtype,
    )
    if cfg.init_from_attention and not resume:
        same = teacher is not None and run.distill.teacher == cfg.init_from_attention
        same = same and teacher_dtype == "same"  # the student's weights in its own precision
        source = (
            teacher
            if same
            else _frozen_model(
                run,
                _attention_only(model_cfg),
                rt.device,
                cfg.init_from_attention,
                "train.init_from_attention",
            )
        )
        _copy_shared(source, model)
        del source
    reference = None
    if run.data.kind == "preference":  # DPO: the frozen reference is the policy's start
        reference = _frozen_model(
            run,
            model_cfg,
            rt.device,
            run.dpo.reference or cfg.init_from,
            "dpo.reference" if run.dpo.reference else "train.init_from",
        )
    if cfg.trainable == "mamba":
        freeze_all_but_mamba(model)
    ddp = wrap_ddp(
        model,
        grad_reduce_in_fp32=cfg.fp32_master_weights,
        use_distributed_optimizer=cfg.use_distributed_optimizer,
    )
    optimizer = build_optimizer(model, ddp, run)
    # The schedule multiplies each loss by this before backward: fp16's dynamic loss scale.
    model.config.grad_scale_func = optimizer.scale_loss

    scheduler = build_scheduler(optimizer, cfg, total)
    checkpoints = output / CHECKPOINTS
    start = 0
    if resume:
        path = find_checkpoint(resume, checkpoints)
        start = _resume(
            path,
            model,
            optimizer,
            scheduler,
            _data_order(order, cfg.seed, run.data.item_length),
            _numerics(cfg),
        )
        if start >= total and rt.is_main:  # a finished job launched again: nothing to redo
            print(f"{path} is at step {start} of {total}: nothing left to train", flush=True)
    if reference is not None and run.dpo.precompute_reference:
        if start < total:
            _precomputed(reference, data, order, micro, seq, rt)
        reference = None  # freed: each step runs the policy alone
        if rt.device.type == "cuda":
            torch.cuda.empty_cache()
    flops_per_token = training_flops_per_token(model_cfg, seq)
    peak = peak_flops(rt.device, cfg.mixed_precision, cfg.use_tf32)
    forward_backward = get_forward_backward_func()

    objective = LanguageModelling(rt.device)
    if teacher is not None:
        objective = Distillation(
            model, teacher, run.distill, model_cfg.num_layers, total, model_cfg.vocab_size
        )
    if run.data.kind == "preference":
        objective = PreferenceOptimisation(model, reference, run.dpo)
    if cfg.cuda_graph:
        forward_backward = GraphedForwardBackward(forward_backward, ddp, objective=objective)

    # Set up without error: only now is anything written (a resumed run appends its metrics).
    # A resumed run's config.yaml, which its checkpoints were trained with, is replaced at its
    # first save: should this run fail before, resuming them as they were is still agreed.
    config_pending = bool(resume)
    if rt.is_main:
        output.mkdir(parents=True, exist_ok=True)
        if not config_pending:
            (output / "config.yaml").write_text(dump(run))
    logger = MetricsLogger(
        output,
        cfg.report_to,
        total,
        is_main=rt.is_main,
        run_name=cfg.run_name,
        config=to_dict(run),  # shown with the run in wandb
        append=bool(resume),
    )

    def forward_step(batches, model):
        return objective.forward_step(next(batches).to(rt.device), model)

    def save(step: int) -> Path:
        if not all_finite(model.parameters(), rt.device):
            raise TrainingError(
                f"the weights are not finite at step {step}; they are not saved (the checkpoints "
                f"in {checkpoints}, if any, are kept)"
            )
        progress = {
            **_data_order(order, cfg.seed, run.data.item_length),
            **_numerics(cfg),
            "consumed_samples": step * order.global_batch,
        }
        path = save_checkpoint(
            checkpoints,
            step,
            model,
            optimizer,
            scheduler,
            progress,
            cfg.keep_last_checkpoints,
            model_cfg,
            cfg.keep_checkpoint_steps,
        )
        nonlocal config_pending
        if config_pending and rt.is_main:
            (output / "config.yaml").write_text(dump(run))
        config_pending = False
        return path

    records: list[dict] = []

    def update() -> tuple[bool, float | None]:
        """The optimizer and scheduler step: whether the update was applied (fp16 skips a step
        whose gradients overflow), and the gradient norm."""
        updated, grad_norm, _ = optimizer.step()
        if updated:
            scheduler.step(1)
        return updated, grad_norm

    def log_step(
        step: int, loss: float, parts: dict, started: float, lr: float, updated: bool, grad_norm
    ) -> None:
        """The step's record, kept and logged, skipped steps included (their validation, when
        due, is not lost)."""
        seconds = time.perf_counter() - started
        record = {
            "loss": loss,
            **(parts if objective.detailed else {}),
            "lr": lr,
            "grad_norm": float(grad_norm) if grad_norm is not None else float("nan"),
            "tokens_per_s": order.global_batch * objective.rows_per_item * seq / seconds,
            "skipped": int(not updated),
        }
        if cfg.mixed_precision == "fp16":
            record["loss_scale"] = float(optimizer.get_loss_scale())
        if peak is not None:
            record["mfu"] = mfu(flops_per_token, record["tokens_per_s"], peak, rt.world_size)
        validating = held_out is not None and (step % cfg.eval_interval == 0 or step == total)
        if validating:
            result = held_out_loss(ddp, held_out, model_cfg.vocab_size, micro, rt.device)
            record.update(valid_loss=result.loss, valid_ppl=result.perplexity)
        records.append({"step": step, **record})
        if step % cfg.log_every == 0 or step == total or validating or not updated:
            logger.log(step, record)

    bad_steps, saved = BadSteps(cfg.max_bad_steps, rt.is_main), None
    interval = cfg.checkpoint_interval(total)
    batches = (
        TokenBatch(b) if isinstance(b, torch.Tensor) else b
        for b in data.batches(order, ps.get_data_parallel_rank(), start_step=start)
    )
    for step in range(start + 1, total + 1):
        started = time.perf_counter()
        ddp.zero_grad_buffer()
        optimizer.zero_grad()
        batch = next(batches)
        objective.begin_step(step, float(optimizer.get_loss_scale()), accumulation, batch)
        losses = forward_backward(
            forward_step_func=forward_step,
            data_iterator=iter(batch.split(micro)),
            model=ddp,
            num_microbatches=accumulation,
            seq_length=padded_length(seq, objective.input_multiple),
            micro_batch_size=micro * objective.micro_batch_factor,
        )
        # fp16's preparation waits on the GPU (its overflow check) and updates the loss scale,
        # so it stays inside the step; bf16/fp32 prepare while the GPU still runs backward.
        with nullcontext() if cfg.mixed_precision == "fp16" else grads_prepared_now(optimizer):
            parts = _across_pipeline_and_replicas(objective.parts(losses), rt.device)
            loss = objective.total(parts)
            lr = optimizer.param_groups[0]["lr"]
            skip = why_skip(loss, ddp, cfg.mixed_precision != "fp16", rt.device)
            updated, grad_norm = (False, None) if skip else update()
        log_step(step, loss, parts, started, lr, updated, grad_norm)
        if skip:
            bad_steps.skipped(step, skip, saved)
        elif updated:
            bad_steps.applied()
        elif optimizer.get_loss_scale() <= MIN_LOSS_SCALE:
            bad_steps.skipped(step, "fp16 gradients overflow at the minimum loss scale", saved)
        exiting = cfg.exit_interval is not None and step % cfg.exit_interval == 0
        at_end = step == total and cfg.save_at_end
        kept = step in cfg.keep_checkpoint_steps
        if at_end or exiting or kept or (interval and step % interval == 0):
            saved = save(step)
        if exiting:
            break
    logger.close()
    return records


def _settings_without_effect(run: RunConfig, model_cfg, total: int) -> list[str]:
    """Settings that a run of `total` steps leaves without their intended effect: accepted
    (a smoke run may mean them), but said."""
    cfg, found = run.train, []
    if cfg.lr_scheduler_type != "constant" and cfg.warmup(total) >= cfg.decay_steps(total):
        found.append(
            f"train warmup of {cfg.warmup(total)} steps is not below the schedule's "
            f"{cfg.decay_steps(total)}: the LR never reaches train.learning_rate"
        )
    switch, guided = run.distill.layer_distill_until_step, run.distill.alpha_layer_distill_loss
    if switch is not None and switch >= total and run.distill.teacher and guided:
        found.append(
            f"distill.layer_distill_until_step={switch} is not before the run's last step "
            f"({total}): the layer loss is never switched off"
        )
    beyond = [step for step in cfg.keep_checkpoint_steps if step > total]
    if beyond:
        found.append(f"train.keep_checkpoint_steps {beyond} lie beyond the run's {total} steps")
    if run.data.item_length - 1 > model_cfg.max_position_embeddings:
        found.append(
            f"data.item_length={run.data.item_length} trains on "
            f"{run.data.item_length - 1} positions, beyond the model's "
            f"max_position_embeddings={model_cfg.max_position_embeddings}"
        )
    return found


def _output_directory(cfg) -> Path:
    """output_dir/run_name, refused at once where a file stands in its way."""
    output = Path(cfg.output_dir) / cfg.run_name
    for path in (output, *output.parents):
        if path.exists() and not path.is_dir():
            raise ConfigError(
                f"train.output_dir/run_name = {output} cannot be made: {path} is a file; expected "
                "a directory or a new path"
            )
    return output


def _held_out(run: RunConfig, seq: int, vocab_size: int, rows: int) -> HeldOutWindows:
    """The held-out windows, at least one batch of `rows` of them (checked now, not at the
    first validation, which may come after hours of training)."""
    held_out = HeldOutWindows(
        run.data.valid_path, seq, vocab_size, max_windows=run.data.valid_windows
    )
    batch = f"one validation batch (per_device_train_batch_size × data-parallel size = {rows})"
    if len(held_out) < rows and len(held_out) == run.data.valid_windows:
        raise ConfigError(
            f"data.valid_windows={run.data.valid_windows} is fewer than {batch}; raise it"
        )
    if len(held_out) < rows:
        raise ConfigError(
            f"data.valid_path={run.data.valid_path} has {len(held_out)} held-out window(s) of "
            f"{seq + 1} tokens, fewer than {batch}"
        )
    return held_out


def _training_data(run: RunConfig, vocab_size: int):
    data = run.data
    if not data.path.strip():
        expected = "a .jsonl file" if data.kind in ("chat", "preference") else "a .bin/.idx prefix"
        raise ConfigError(f"data.path is not set; data.kind={data.kind} expects {expected}")
    if data.kind == "corpus":
        eod = HFTokenizerInfo.from_hf(load_tokenizer(data.tokenizer)).eod
        return CorpusSamples(
            data.path,
            HFTokenizerInfo(vocab_size=vocab_size, eod=eod),
            data.item_length,
            run.train.seed,
            samples=run.train.max_train_samples,
            cache_dir=Path(run.train.output_dir) / run.train.run_name / "data_cache",
        )
    if data.kind == "pythia":
        return PythiaPreshuffled(
            data.path,
            vocab_size=vocab_size,
            allow_short_bin=data.allow_short_bin,
            sequence_length=data.item_length,
        )
    common = (data.path, data.tokenizer, data.item_length, run.train.seed, data.shuffle)
    if data.kind == "chat":
        return ChatDataset(*common, data.insert_empty_system, vocab_size, data.pack, data.train_on)
    return PreferenceDataset(*common, data.insert_empty_system, vocab_size, data.max_prompt_length)


def _precomputed(reference, data, order: DataOrder, micro: int, seq: int, rt) -> None:
    """The reference's log-probabilities of the run's pairs, attached to the data."""
    started = time.perf_counter()
    pool = range(order.first_item, order.first_item + order.samples(len(data)))
    data.reference = reference_logps(reference, data, pool, micro, seq, rt.device)
    if rt.is_main:
        seconds = time.perf_counter() - started
        print(f"reference log-probabilities of {len(pool)} pairs in {seconds:.1f} s", flush=True)


def _attention_only(model_cfg):
    return dataclasses.replace(model_cfg, layer_pattern="A" * model_cfg.num_layers)


def _frozen_model(
    run: RunConfig, config, device, weights: str | None, setting: str, dtype: str = "same"
):
    """A frozen model of `config` in the student's layout (a teacher, or DPO's reference), with
    `weights` (from `setting`) loaded, in the student's precision or `dtype`; None without
    weights."""
    if not weights:
        return None
    precision = RunPrecision(_DTYPE[run.train.mixed_precision] if dtype == "same" else dtype)
    model = build_model(config, run.parallel, precision).to(device)
    attention_only = set(config.mixers) == {"attention"}
    _initialise(
        model, Path(weights), setting, " (expected the attention-only model)" * attention_only
    )
    model.eval()
    model.requires_grad_(False)
    return model


@torch.no_grad()
def _copy_shared(source, target) -> None:
    """Every tensor the student shares with the attention model (embeddings, norms, MLPs, the
    attention layers it keeps); its Mamba mixers stay freshly initialised."""
    own = dict(source.named_parameters())
    for name, param in target.named_parameters():
        if name in own and own[name].shape == param.shape:
            param.copy_(own[name])


def _initialise(model, path: Path, setting: str, expected: str = "") -> None:
    """Start from a checkpoint's weights (any layout) or a file of whole tensors; weights that do
    not fit are refused naming the `setting` they came from (and what it `expected`)."""
    where = f"{setting}={path}{expected}"
    if path.is_dir():
        try:
            load_weights(find_checkpoint(path, path), model)
        except CheckpointError as error:
            raise CheckpointError(f"{where}: {error}") from None
        return
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError):  # torch's advice does not apply
        raise CheckpointError(
            f"{where} is neither a checkpoint directory nor a torch file of tensors"
        ) from None
    try:
        load_full_state(model, state)
    except (ValueError, RuntimeError) as error:  # not this model's
        raise CheckpointError(f"{where} does not fit this model: {error}") from None


def _data_order(order: DataOrder, seed: int, item_length: int) -> dict:
    """What decides which items each step reads (the number of epochs does not: each epoch's
    order is its own)."""
    return {
        "global_batch": order.global_batch,
        "first_item": order.first_item,
        "max_train_samples": order.max_train_samples,
        "seed": seed,  # shuffles corpus and chat data
        "item_length": item_length,  # cuts corpus and chat data into its items
    }


def _numerics(cfg) -> dict:
    """What decides the shape of the optimizer's state (fp32 master weights or none), and which
    parameters it decays (a resume continues the checkpoint's parameter groups)."""
    return {
        "mixed_precision": cfg.mixed_precision,
        "fp32_master_weights": cfg.fp32_master_weights,
        "weight_decay_mamba_only": cfg.weight_decay_mamba_only,
    }


def _resume(path: Path, model, optimizer, scheduler, data_order: dict, numerics: dict) -> int:
    """Restore the run's state from `path`; returns the last completed step. What the run must
    share with the checkpoint is checked before any tensor is read (older checkpoints lack some
    keys)."""
    saved = saved_progress(path)
    for key, value in numerics.items():
        if key in saved and saved[key] != value:
            raise CheckpointError(
                f"{path} was trained with train.{key}={saved[key]}; this run has {value}, and a "
                "resume continues the checkpoint's optimizer state (load its weights with "
                "train.init_from to change it)"
            )
    for key, value in data_order.items():
        if key in saved and saved[key] != value:
            raise CheckpointError(
                f"{path} was trained with {key}={saved[key]}; this run has {value}, so its "
                "data would not continue where the checkpoint stopped"
            )
    return load_checkpoint(path, model, optimizer, scheduler)["step"]
