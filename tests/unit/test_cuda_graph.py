"""train.cuda_graph: what it needs, said in one error before anything is built or written, and
the step state a graph reads kept in tensors updated in place. (The graphs themselves replay on
the GPU machine: tests/gpu/test_cuda_graph_gpu.py.)"""

from contextlib import contextmanager
from types import SimpleNamespace

import pytest
import torch

from megatron_mamba.config import ParallelConfig
from megatron_mamba.config_io import load
from megatron_mamba.data.batches import PreferenceBatch, TokenBatch
from megatron_mamba.distill.config import DistillConfig
from megatron_mamba.distill.objective import Distillation
from megatron_mamba.models.build import build_model
from megatron_mamba.models.presets import preset
from megatron_mamba.train import main
from megatron_mamba.training.cuda_graph import (
    GraphedForwardBackward,
    _copy_into,
    _shapes,
    _tensors,
    _to_device,
    graph_refusal,
)
from megatron_mamba.training.run_config import RunConfig
from megatron_mamba.training.target_mean import GlobalTargetMean

CUDA = torch.device("cuda")  # a device name only: nothing is allocated on it
WEIGHTS = __file__  # a file that exists, for settings a run checks before it starts


def _run(*overrides: str) -> RunConfig:
    return load(RunConfig, None, ["preset=tiny-gpt-neox", "train.cuda_graph=true", *overrides])


def test_a_plain_gpu_run_may_use_graphs():
    assert graph_refusal(_run(), CUDA) is None
    assert graph_refusal(_run("train.mixed_precision=bf16"), CUDA) is None


@pytest.mark.parametrize(
    "overrides,need",
    [
        ((), "a GPU"),
        (("parallel.pipeline=2",), "pipeline parallel size 1"),
        (("parallel.tensor=2",), "tensor parallel size 1"),
        (("train.mixed_precision=fp16",), "mixed_precision no or bf16"),
        (("train.recompute=full",), "train.recompute=none"),
        (("model.hidden_dropout=0.1",), "no dropout"),
        (("model.attention_dropout=0.1",), "no dropout"),
    ],
)
def test_each_missing_need_is_named(overrides, need):
    device = torch.device("cpu") if need == "a GPU" else CUDA
    refusal = graph_refusal(_run(*overrides), device)
    assert refusal.startswith("train.cuda_graph=true needs ") and need in refusal
    assert refusal.count(";") == 0  # only what is missing


@pytest.mark.parametrize(
    "overrides",
    [
        (),
        (
            f"distill.teacher={WEIGHTS}",
            "distill.alpha_layer_distill_loss=15",
            "distill.layer_distill_until=0.4",
        ),
        ("data.kind=preference", "data.tokenizer=/t", f"dpo.reference={WEIGHTS}"),
        ("train.mixed_precision=bf16",),
    ],
    ids=["language-modelling", "hybrid-distillation", "dpo", "bf16"],
)
def test_every_objective_may_run_from_graphs(overrides):
    assert graph_refusal(_run(*overrides), CUDA) is None


def test_every_missing_need_is_named_at_once():
    refusal = graph_refusal(_run("parallel.pipeline=2", "train.recompute=full"), CUDA)
    assert "pipeline parallel size 1" in refusal and "train.recompute=none" in refusal


def test_training_on_cpu_with_graphs_stops_before_writing(capsys, monkeypatch, tmp_path, items):
    import megatron_mamba.runtime

    monkeypatch.setattr(megatron_mamba.runtime, "shutdown_runtime", lambda: None)
    args = ["preset=tiny-gpt-neox", f"data.path={items}", "data.item_length=33"]
    args += [f"train.output_dir={tmp_path}", "train.cuda_graph=true", "train.mixed_precision=no"]
    assert main(args) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: train.cuda_graph=true needs a GPU"]
    assert list(tmp_path.iterdir()) == []


def test_a_graph_needs_an_eager_first_step():
    with pytest.raises(ValueError, match="eager_steps=0 must be at least 1"):
        GraphedForwardBackward(None, None, eager_steps=0)


def test_the_step_factor_of_a_masked_loss_is_one_tensor_updated_in_place(runtime):
    """A graph captured in one step reads the factor's storage in every later step."""
    mean = GlobalTargetMean(runtime.device)
    tokens = torch.zeros(2, 5, dtype=torch.long)
    per_token = torch.ones(2, 4)
    first = TokenBatch(tokens, torch.tensor([[1.0, 1, 0, 0], [0, 0, 0, 1]]))
    second = TokenBatch(tokens, torch.tensor([[1.0, 1, 1, 1], [0, 1, 1, 1]]))
    mean.begin_step(first, accumulation=2)
    factor = mean.factor
    assert mean(first, per_token).item() == pytest.approx(3 * 2 / 3)
    mean.begin_step(second, accumulation=2)
    assert mean.factor is factor
    assert mean(second, per_token).item() == pytest.approx(7 * 2 / 7)
    assert factor.item() == pytest.approx(2 / 7)
    mean.begin_step(TokenBatch(tokens), accumulation=2)  # no mask: each micro-batch's mean
    assert mean.factor is None and mean(TokenBatch(tokens), per_token).item() == 1.0


def _pairs(seed: int, with_reference: bool) -> PreferenceBatch:
    g = torch.Generator().manual_seed(seed)
    rows = [TokenBatch(torch.randint(0, 9, (2, 5), generator=g), torch.rand(2, 4, generator=g))]
    rows.append(TokenBatch(torch.randint(0, 9, (2, 5), generator=g), torch.rand(2, 4, generator=g)))
    return PreferenceBatch(*rows, torch.rand(2, 2, generator=g) if with_reference else None)


def test_graph_inputs_are_copies_that_later_batches_are_copied_into():
    """The graph reads fixed tensors: each micro-batch, nested ones too, lands in them."""
    first, second = _pairs(0, True), _pairs(1, True)
    static = _to_device(first, torch.device("cpu"))
    names = [name for name, _ in _tensors(static)]
    assert names == [
        "chosen.tokens",
        "chosen.loss_mask",
        "rejected.tokens",
        "rejected.loss_mask",
        "reference",
    ]
    storages = [t.data_ptr() for _, t in _tensors(static)]
    for (_, copy), (_, original) in zip(_tensors(static), _tensors(first), strict=True):
        assert torch.equal(copy, original) and copy.data_ptr() != original.data_ptr()
    _copy_into(static, second)
    assert [t.data_ptr() for _, t in _tensors(static)] == storages
    for (_, copy), (_, new) in zip(_tensors(static), _tensors(second), strict=True):
        assert torch.equal(copy, new)
    assert _shapes(static) == _shapes(second)
    assert _shapes(_pairs(0, False))[-1] == ("reference", None) != _shapes(static)[-1]


class _FakeDDP:
    """What GraphedForwardBackward asks of megatron's DDP, recorded."""

    def __init__(self, calls):
        self.calls = calls
        self.config = SimpleNamespace(finalize_model_grads_func=lambda m: calls.append("finalize"))

    @contextmanager
    def no_sync(self):
        yield

    def start_grad_sync(self):
        self.calls.append("grad_sync")


class _Objective:
    def __init__(self, calls):
        self.calls, self.key = calls, ("guided",)

    def graph_key(self):
        return self.key

    def clear_step_totals(self):
        self.calls.append("clear")


def test_a_new_graph_key_recaptures_and_a_capture_clears_the_step_totals(monkeypatch):
    """Off the GPU, with capture and replay stood in: the eager steps, one capture, replays,
    a recapture when the objective's constants change (the hybrid schedule's switch)."""
    calls: list = []
    objective = _Objective(calls)
    graphed = GraphedForwardBackward(
        lambda **kw: calls.append("eager") or [], _FakeDDP(calls), 1, objective
    )

    def capture(self, forward_step_func, example, num_microbatches):
        calls.append("capture")
        self.static_batch = _to_device(example, torch.device("cpu"))
        self.shape = _shapes(self.static_batch)
        self.static_records = {"ce": torch.tensor(1.0)}
        self.graph = SimpleNamespace(replay=lambda: calls.append("replay"))

    monkeypatch.setattr(GraphedForwardBackward, "_capture", capture)
    kwargs = dict(forward_step_func=None, model=None, seq_length=4, micro_batch_size=1)

    def step(micro_batches=2, seq=5):
        calls.clear()
        micro = TokenBatch(torch.zeros(1, seq, dtype=torch.long))
        data = iter([micro] * micro_batches)
        graphed(data_iterator=data, num_microbatches=micro_batches, **kwargs)
        return list(calls)

    assert step() == ["eager"]
    assert step() == ["capture", "clear", "replay", "replay", "grad_sync", "finalize"]
    assert step() == ["replay", "replay", "grad_sync", "finalize"]
    assert step(seq=7) == ["eager"]  # another shape
    objective.key = ("unguided",)
    assert step()[:2] == ["capture", "clear"]
    assert graphed.key == (2, "unguided")
    assert step(micro_batches=3) == ["capture", "clear"] + ["replay"] * 3 + [
        "grad_sync",
        "finalize",
    ]


def test_distillation_keys_its_graph_by_the_layer_alpha_and_sums_in_one_tensor(runtime):
    student = build_model(preset("tiny-gpt-neox", layer_pattern="MA"), ParallelConfig())
    teacher = build_model(preset("tiny-gpt-neox"), ParallelConfig()).requires_grad_(False)
    cfg = DistillConfig(teacher="t", alpha_layer_distill_loss=15.0, layer_distill_until=0.5)
    objective = Distillation(student, teacher, cfg, 2, total_steps=4, vocab_size=256)
    total = objective.layer_sum
    batch = TokenBatch(torch.randint(0, 256, (2, 9)))
    keys = []
    for step in range(1, 5):
        objective.begin_step(step, 1.0, 2, batch)
        keys.append(objective.graph_key())
        objective.forward_step(batch, student)
        assert objective.layer_sum is total
        assert (total.item() > 0) == (step <= 2)  # the layer loss, while it is trained
    assert keys == [(15.0, 0.5)] * 2 + [(0.0, 0.5)] * 2
    objective.begin_step(1, 1.0, 2, batch)
    objective.forward_step(batch, student)
    objective.clear_step_totals()
    assert total.item() == 0.0
    objective.remove_hooks()
