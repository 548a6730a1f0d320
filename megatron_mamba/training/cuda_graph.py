"""A training step's micro-batches replayed from one CUDA graph of a forward + backward.

At small sizes a step is bound by the host launching kernels, not by the GPU running them (a
DPO step of a 1.2B hybrid: 100 ms of CPU against 67 ms of CUDA time; `benchmarks/
cuda_graph_probe.py`: 2.8–5× on a 4-layer model). Captured once, a micro-batch's forward, loss
and backward (into DDP's gradient buffer) replays as one launch. The batch is copied into static
tensors the graph reads; every quantity that changes from step to step must live in a tensor
updated in place (the loss's target count does), for the graph holds what it read at capture.

`GraphedForwardBackward` stands in for megatron's `forward_backward_func` on one pipeline stage:
the first steps run eagerly through megatron's schedule (which also sets up DDP's buckets), then
one micro-batch is captured; a step whose micro-batches do not have the captured shapes runs
eagerly. The data-parallel gradient reduction runs after the replays, outside the graph.
"""

from __future__ import annotations

import dataclasses

import torch


def leave_the_default_stream() -> None:
    """Run all later GPU work on one side stream, the stream graphs are captured on: capture
    cannot happen on the legacy default stream, and autograd accumulates a parameter's gradient
    on the stream that was current when megatron's DDP registered its hooks (before any
    capture), so DDP must be set up on the capturing stream."""
    torch.cuda.set_stream(torch.cuda.Stream())


def graph_refusal(run, device: torch.device) -> str | None:
    """Why `train.cuda_graph=true` cannot run this configuration, or None. Every objective
    (language modelling, distillation, DPO) keeps its per-step state in tensors or in its
    `graph_key`."""
    train, parallel, model = run.train, run.parallel, run.model_config()
    reasons = {
        "a GPU": device.type != "cuda",
        "pipeline parallel size 1": parallel.pipeline != 1,
        "tensor parallel size 1 (not yet validated on GPUs beyond one)": parallel.tensor != 1,
        "train.mixed_precision no or bf16 (fp16's loss scale is replaced as it changes)": (
            train.mixed_precision == "fp16"
        ),
        "train.recompute=none": train.recompute != "none",
        "no dropout (megatron's RNG tracker cannot be captured)": (
            model.hidden_dropout > 0 or model.attention_dropout > 0
        ),
    }
    needs = [need for need, missing in reasons.items() if missing]
    if not needs:
        return None
    return "train.cuda_graph=true needs " + "; ".join(needs)


class GraphedForwardBackward:
    """`objective` may say what its graph holds as constants (`graph_key()`: a new key, a new
    capture) and forget the sums a capture's warm-up forwards added (`clear_step_totals()`)."""

    def __init__(self, eager_forward_backward, ddp, eager_steps: int = 2, objective=None):
        if eager_steps < 1:  # megatron's DDP learns its buckets' order in the first step
            raise ValueError(f"eager_steps={eager_steps} must be at least 1")
        self.eager = eager_forward_backward
        self.ddp = ddp
        self.eager_steps = eager_steps
        self.objective = objective
        self.steps = 0
        self.graph: torch.cuda.CUDAGraph | None = None
        self.key = None
        self.static_batch = None
        self.shape: list | None = None  # the static batch's tensor shapes
        self.static_records: dict | None = None

    def __call__(
        self,
        *,
        forward_step_func,
        data_iterator,
        model,
        num_microbatches,
        seq_length,
        micro_batch_size,
    ) -> list[dict]:
        micro_batches = list(data_iterator)
        self.steps += 1
        shape = self.shape or _shapes(micro_batches[0])
        fits = all(_shapes(b) == shape for b in micro_batches)
        if self.steps <= self.eager_steps or not fits:
            return self.eager(
                forward_step_func=forward_step_func,
                data_iterator=iter(micro_batches),
                model=model,
                num_microbatches=num_microbatches,
                seq_length=seq_length,
                micro_batch_size=micro_batch_size,
            )
        # what the graph holds as constants: the loss's division by the micro-batch count too
        key = (num_microbatches, *getattr(self.objective, "graph_key", tuple)())
        if self.graph is not None and key != self.key:
            # the old graph's memory returns to the allocator once nothing holds its outputs
            self.graph, self.static_records = None, None
        if self.graph is None:
            self._capture(forward_step_func, micro_batches[0], num_microbatches)
            self.key = key
            if hasattr(self.objective, "clear_step_totals"):
                self.objective.clear_step_totals()
        records = []
        with self.ddp.no_sync():  # the gradients are reduced once, after the last micro-batch
            for batch in micro_batches:
                _copy_into(self.static_batch, batch)
                self.graph.replay()
                records.append({k: v.clone() for k, v in self.static_records.items()})
        self.ddp.start_grad_sync()
        self.ddp.config.finalize_model_grads_func([self.ddp])
        return records

    def _capture(self, forward_step_func, example, num_microbatches: int) -> None:
        """Copy `example` into the static batch, warm up, capture, and leave the gradient
        buffer as it was (capture itself runs nothing; the warm-up's gradients are zeroed)."""
        self.static_batch = _to_device(example, next(self.ddp.parameters()).device)
        self.shape = _shapes(self.static_batch)
        forward_backward = self._micro_batch_pass(forward_step_func, num_microbatches)
        with self.ddp.no_sync():
            for _ in range(2):
                forward_backward()
            self.graph, self.static_records = self._record(forward_backward)
        self.ddp.zero_grad_buffer()

    def _record(self, forward_backward):
        """One pass captured on the current (side) stream: (the graph, its output records)."""
        stream = torch.cuda.current_stream()
        if stream == torch.cuda.default_stream():
            raise RuntimeError("call leave_the_default_stream() before wrapping the model in DDP")
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, stream=stream):
            records = forward_backward()
        torch.cuda.synchronize()
        return graph, records

    def _micro_batch_pass(self, forward_step_func, num_microbatches: int):
        """One micro-batch's forward, loss and backward on the static batch, as megatron's
        schedule runs them (the loss scaled by 1/micro-batches and the loss scale); returns
        a function that runs it and returns the micro-batch's records."""
        config = self.ddp.config

        def forward_backward() -> dict:
            output, loss_func = forward_step_func(iter([self.static_batch]), self.ddp)
            loss, records = loss_func(output)
            loss = loss / num_microbatches  # as megatron's schedule scales it
            if config.grad_scale_func is not None:
                loss = config.grad_scale_func(loss)
            loss.backward()
            return records

        return forward_backward


def _tensors(batch, prefix: str = "") -> list[tuple[str, torch.Tensor | None]]:
    """Every tensor field of `batch`, a dataclass of tensors and nested such dataclasses (a
    preference batch holds two token batches), by dotted name."""
    found = []
    for field in dataclasses.fields(batch):
        name, value = prefix + field.name, getattr(batch, field.name)
        if dataclasses.is_dataclass(value):
            found += _tensors(value, name + ".")
        else:
            found.append((name, value))
    return found


def _shapes(batch) -> list[tuple[str, tuple | None]]:
    return [(name, None if t is None else tuple(t.shape)) for name, t in _tensors(batch)]


def _to_device(batch, device):
    """A copy of `batch` in fresh tensors on `device`: the graph's inputs."""
    copies = {}
    for field in dataclasses.fields(batch):
        value = getattr(batch, field.name)
        if dataclasses.is_dataclass(value):
            copies[field.name] = _to_device(value, device)
        else:
            copies[field.name] = None if value is None else value.to(device, copy=True)
    return dataclasses.replace(batch, **copies)


def _copy_into(static, batch) -> None:
    for (_, target), (_, source) in zip(_tensors(static), _tensors(batch), strict=True):
        if target is not None:
            target.copy_(source, non_blocking=True)
