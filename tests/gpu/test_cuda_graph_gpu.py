"""On the GPU: a step replayed from a CUDA graph gives the eager schedule's loss and gradients,
step after step as the data and the masked loss's target count change; a micro-batch of another
shape runs eagerly; and the trainer with train.cuda_graph=true follows the eager run. DPO's
objective (reference in the step, or its log-probabilities with the batch) replays as well; the
trainer refuses graphs for DPO until that test has passed on the GPU machine; so for
distillation, whose graph is captured again when the hybrid schedule drops the layer loss."""

import numpy as np
import pytest
import torch
from megatron.core.pipeline_parallel import get_forward_backward_func

from megatron_mamba.config import ParallelConfig
from megatron_mamba.data.batches import PreferenceBatch, TokenBatch
from megatron_mamba.distill.config import DistillConfig
from megatron_mamba.distill.objective import Distillation
from megatron_mamba.models.build import build_model
from megatron_mamba.models.presets import preset
from megatron_mamba.runtime import init_runtime
from megatron_mamba.training.cuda_graph import GraphedForwardBackward, leave_the_default_stream
from megatron_mamba.training.ddp import wrap_ddp
from megatron_mamba.training.dpo import DPOConfig, PreferenceOptimisation
from megatron_mamba.training.objective import LanguageModelling
from tests.distributed.launch import torchrun
from tests.distributed.train_runs import TRAIN, losses, records, settings

pytestmark = pytest.mark.gpu

ROWS, MICRO, SEQ = 4, 2, 64


@pytest.fixture(scope="module")
def runtime():
    runtime = init_runtime(seed=0)
    leave_the_default_stream()
    return runtime


def _batches(count: int, seq: int = SEQ) -> list[TokenBatch]:
    """Masked batches whose loss-carrying targets differ in number from step to step."""
    g = torch.Generator().manual_seed(1)
    return [
        TokenBatch(
            torch.randint(0, 256, (ROWS, seq + 1), generator=g),
            (torch.rand(ROWS, seq, generator=g) < 0.2 + 0.15 * i).float(),
        )
        for i in range(count)
    ]


def _pairs(count: int, with_reference: bool) -> list[PreferenceBatch]:
    """Pairs whose responses (the masked targets) differ in length."""
    g = torch.Generator().manual_seed(2)

    def rows():
        mask = torch.zeros(ROWS, SEQ)
        for row in range(ROWS):
            start = int(torch.randint(4, SEQ // 2, (1,), generator=g))
            mask[row, start : start + int(torch.randint(1, SEQ // 2, (1,), generator=g))] = 1
        return TokenBatch(torch.randint(0, 256, (ROWS, SEQ + 1), generator=g), mask)

    return [
        PreferenceBatch(
            rows(), rows(), -100 * torch.rand(ROWS, 2, generator=g) if with_reference else None
        )
        for _ in range(count)
    ]


def _steps(forward_backward, ddp, objective, batches) -> list[tuple]:
    """Each step's loss, its parts and DDP's gradient buffer (no update between steps)."""
    results = []
    for step, batch in enumerate(batches, 1):
        ddp.zero_grad_buffer()
        objective.begin_step(step, 1.0, ROWS // MICRO, batch)
        step_records = forward_backward(
            forward_step_func=lambda it, model: objective.forward_step(next(it).to("cuda"), model),
            data_iterator=iter(batch.split(MICRO)),
            model=ddp,
            num_microbatches=ROWS // MICRO,
            seq_length=batch.inputs.shape[1],
            micro_batch_size=MICRO,
        )
        parts = objective.parts(step_records)
        results.append((objective.total(parts), parts, ddp.buffers[0].grad_data.clone()))
    return results


def _same_steps(graphed, eager) -> None:
    for step, ((loss, parts, grads), (loss_e, parts_e, grads_e)) in enumerate(
        zip(graphed, eager, strict=True), 1
    ):
        assert loss == pytest.approx(loss_e, rel=1e-6), f"step {step}"
        assert parts == pytest.approx(parts_e, rel=1e-6), f"step {step}"
        # mamba_ssm's backward adds some gradients atomically: equal to rounding
        torch.testing.assert_close(grads, grads_e, rtol=1e-4, atol=1e-6, msg=f"step {step}")


def test_replayed_steps_give_the_eager_losses_and_gradients(runtime):
    torch.backends.cuda.matmul.allow_tf32 = False
    config = preset("tiny-gpt-neox", num_layers=3, layer_pattern="AMS")
    model = build_model(config, ParallelConfig()).cuda().train()
    ddp = wrap_ddp(model)
    objective = LanguageModelling(runtime.device)
    batches = _batches(5) + _batches(1, seq=SEQ // 2)  # the last: another shape, run eagerly
    eager = _steps(get_forward_backward_func(), ddp, objective, batches)
    graphed_schedule = GraphedForwardBackward(get_forward_backward_func(), ddp, eager_steps=1)
    graphed = _steps(graphed_schedule, ddp, objective, batches)
    assert graphed_schedule.graph is not None
    assert graphed_schedule.shape[0] == ("tokens", (MICRO, SEQ + 1))
    _same_steps(graphed, eager)
    assert len({round(loss, 6) for loss, _, _ in eager}) == len(eager)  # the steps differ


@pytest.mark.parametrize("precomputed", [False, True])
def test_replayed_dpo_steps_give_the_eager_losses_and_gradients(runtime, precomputed):
    torch.backends.cuda.matmul.allow_tf32 = False
    config = preset("tiny-llama", layer_pattern="MA", mamba={"layout": "attention"})
    policy = build_model(config, ParallelConfig()).cuda().train()
    reference = None
    if not precomputed:
        reference = build_model(config, ParallelConfig()).cuda().eval().requires_grad_(False)
        reference.load_state_dict(policy.state_dict())
        with torch.no_grad():  # a reference unlike the policy: the losses differ by step
            for param in reference.parameters():
                param.add_(0.05 * torch.randn_like(param))
    ddp = wrap_ddp(policy)
    objective = PreferenceOptimisation(policy, reference, DPOConfig(beta=0.1), vocab_size=256)
    batches = _pairs(4, with_reference=precomputed)
    eager = _steps(get_forward_backward_func(), ddp, objective, batches)
    graphed_schedule = GraphedForwardBackward(get_forward_backward_func(), ddp, eager_steps=1)
    graphed = _steps(graphed_schedule, ddp, objective, batches)
    assert graphed_schedule.graph is not None
    _same_steps(graphed, eager)
    assert eager[1][0] != eager[2][0]


def test_replayed_distillation_steps_follow_eager_across_the_hybrid_switch(runtime):
    """Target-guided for two steps, then CE + logits KL alone: the graph is captured for the
    guided steps and again after the switch; every part of the loss, the layer loss's logged
    value included, and the gradients are the eager schedule's."""
    torch.backends.cuda.matmul.allow_tf32 = False
    student = build_model(
        preset("tiny-gpt-neox", num_layers=3, layer_pattern="AMS"), ParallelConfig()
    )
    teacher = build_model(preset("tiny-gpt-neox", num_layers=3), ParallelConfig())
    student, teacher = student.cuda().train(), teacher.cuda().eval().requires_grad_(False)
    ddp = wrap_ddp(student)
    cfg = DistillConfig(
        teacher="t",
        alpha_layer_distill_loss=15.0,
        alpha_logits_distill_loss=1.0,
        layer_distill_until=0.5,
    )
    objective = Distillation(student, teacher, cfg, 3, total_steps=4, vocab_size=256)
    batches = _batches(4)
    eager = _steps(get_forward_backward_func(), ddp, objective, batches)
    graphed_schedule = GraphedForwardBackward(
        get_forward_backward_func(), ddp, eager_steps=1, objective=objective
    )
    graphed = _steps(graphed_schedule, ddp, objective, batches)
    assert graphed_schedule.key == (2, 0.0, 0.5)  # captured again after the switch
    assert [("layer" in parts) for _, parts, _ in eager] == [True, True, False, False]
    _same_steps(graphed, eager)


def test_training_with_graphs_follows_the_eager_run(tmp_path, items, initial):
    def run(name, graph):
        args = settings(tmp_path, items, name, **{"train.init_from": initial})
        args.update({"train.mixed_precision": "bf16", "train.max_steps": 8})  # all 64 items
        args.update({"train.use_tf32": False, "train.cuda_graph": graph})
        args["train.gradient_accumulation_steps"] = 2
        torchrun(TRAIN, 1, *(f"{k}={v}" for k, v in args.items()), cpu=False)
        return records(tmp_path / name)

    eager, graphed = run("eager", False), run("graphed", True)
    assert losses(eager)[-1] < losses(eager)[0] - 0.5  # it learns
    np.testing.assert_allclose(losses(graphed), losses(eager), rtol=1e-3)
    np.testing.assert_allclose(
        [r["grad_norm"] for r in graphed], [r["grad_norm"] for r in eager], rtol=1e-2
    )
