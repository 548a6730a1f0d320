"""The distillation objective: teacher and student through the pipeline together.

Both models are built with the same TP/PP layout, so stage i holds blocks of the same numbers in
each. Non-last stages send [student; teacher] hidden states concatenated along the batch
dimension (the schedule is told micro-batch × 2). The teacher runs first, without gradients; its
block outputs are kept by forward hooks, and the student's hooks take each distilled block's
layer loss with its gradient at once and attach the gradient to the student's activations
(aux_loss.py) — under full activation recomputation to the block's rerun in backward, the
first run having no autograd. The last stage computes CE and the logits
KL on the vocab-parallel logits. Reported parts: ce, layer, logits_kl — each summed over
pipeline stages by the trainer — and their weighted total.
"""

from __future__ import annotations

from collections import defaultdict, deque

import torch
from megatron.core import parallel_state as ps

from megatron_mamba.config_io import ConfigError
from megatron_mamba.data.batches import TokenBatch
from megatron_mamba.distill.aux_loss import attach_gradient, loss_scale, set_loss_scale
from megatron_mamba.distill.config import DistillConfig
from megatron_mamba.distill.losses import block_mse_and_gradient, ce_and_logits_kl
from megatron_mamba.distill.schedule import layer_alpha
from megatron_mamba.training.paired import forward_pair
from megatron_mamba.training.target_mean import GlobalTargetMean


class Distillation:
    detailed = True
    rows_per_item = 1
    input_multiple = 1  # inputs as they come: the layer loss is a mean over every position

    def __init__(
        self,
        student,
        teacher,
        cfg: DistillConfig,
        num_layers: int,
        total_steps: int,
        vocab_size: int,
    ):
        self.student, self.teacher, self.cfg = student, teacher, cfg
        self.vocab_size = vocab_size
        self.total_steps = total_steps
        self.distilled = set(range(1, num_layers - cfg.distill_skip_last + 1))
        if cfg.alpha_layer_distill_loss and not self.distilled:
            raise ConfigError(
                f"distill.distill_skip_last={cfg.distill_skip_last} leaves none of the "
                f"{num_layers} blocks to the layer loss (alpha_layer_distill_loss="
                f"{cfg.alpha_layer_distill_loss}); skip fewer than {num_layers}"
            )
        self.alpha_layer = cfg.alpha_layer_distill_loss
        self.teacher_blocks: dict[int, torch.Tensor] = {}
        self.accumulation = 1
        self.for_recomputation: dict[int, deque] = defaultdict(deque)
        self.in_step = False  # the hooks act only on this objective's forwards (not validation)
        self.device = next(student.parameters()).device
        # The step's layer loss, summed in place over its micro-batches (a CUDA graph of a
        # micro-batch adds to the same storage: training/cuda_graph.py).
        self.layer_sum = torch.zeros((), dtype=torch.float32, device=self.device)
        self.mean = GlobalTargetMean(self.device)
        sequence_parallel = student.config.sequence_parallel
        # With sequence parallelism each TP rank holds 1/TP of the tokens: its mean counts 1/TP.
        self.token_share = 1 / ps.get_tensor_model_parallel_world_size() if sequence_parallel else 1
        self._hooks = [
            layer.register_forward_hook(self._keep_teacher_block)
            for layer in teacher.decoder.layers
        ] + [
            layer.register_forward_hook(self._attach_layer_loss) for layer in student.decoder.layers
        ]

    def remove_hooks(self) -> None:
        """Leave both models as they were built."""
        for hook in self._hooks:
            hook.remove()

    @property
    def uses_teacher(self) -> bool:
        return bool(self.alpha_layer or self.cfg.alpha_logits_distill_loss)

    @property
    def micro_batch_factor(self) -> int:
        return 2 if self.uses_teacher else 1

    def begin_step(
        self, step: int, loss_scale: float, accumulation: int, batch: TokenBatch | None = None
    ) -> None:
        """`batch`: this replica's whole step, whose loss-carrying targets CE and KL average
        over (training/target_mean.py)."""
        self.mean.begin_step(batch, accumulation)
        cfg = self.cfg
        self.alpha_layer = layer_alpha(
            step,
            self.total_steps,
            cfg.alpha_layer_distill_loss,
            cfg.layer_distill_until,
            cfg.layer_distill_until_step,
        )
        self.clear_step_totals()
        self.accumulation = accumulation
        self.for_recomputation = defaultdict(deque)
        set_loss_scale(loss_scale / accumulation)

    def clear_step_totals(self) -> None:
        """Forget what this step's forwards have summed so far."""
        self.layer_sum.zero_()

    def graph_key(self) -> tuple:
        """What a CUDA graph of a micro-batch holds as constants: a change (the hybrid schedule
        dropping the layer loss) needs a new capture."""
        return (self.alpha_layer, loss_scale())

    def _keep_teacher_block(self, module, inputs, output):
        if self.in_step and self.alpha_layer and module.layer_number in self.distilled:
            self.teacher_blocks[module.layer_number] = output[0]

    def _attach_layer_loss(self, module, inputs, output):
        number = module.layer_number
        if number not in self.distilled:
            return None
        hidden, context = output
        if self.in_step and self.alpha_layer:
            teacher = self.teacher_blocks.pop(number)
            share = self.token_share / len(self.distilled)
            weight = self.alpha_layer * share * loss_scale()  # scaled before an fp16 cast
            mse, gradient = block_mse_and_gradient(
                hidden, teacher, self.cfg.distill_normalization, weight
            )
            self.layer_sum.add_(mse.float() * share)
            if not torch.is_grad_enabled():  # a recomputed block's first forward: see below
                self.for_recomputation[number].append(gradient)
                return None
            return attach_gradient(hidden, gradient), context
        if torch.is_grad_enabled() and self.for_recomputation[number]:
            # the block run again in backward (full recomputation): micro-batches come back in
            # the order they went forward
            return attach_gradient(hidden, self.for_recomputation[number].popleft()), context
        return None

    def forward_step(self, batch: TokenBatch, model):
        """CE and logits KL are means over the step's targets that carry loss (all of them for
        pre-training data, assistant tokens for chat data); the layer loss is over every token."""
        if not self.uses_teacher:
            per_token = model(batch.inputs, None, None, labels=batch.labels)
            return per_token, lambda output: self._ce_only(batch, output)

        self.in_step = True
        try:
            send, outputs = forward_pair(self.student, self.teacher, batch.inputs, model)
        finally:
            self.in_step = False
        if outputs is None:
            return send, None

        def loss_func(outputs):
            # over the real vocabulary: the same losses at every TP size
            with_kl = bool(self.cfg.alpha_logits_distill_loss)
            per_token_ce, per_token_kl = ce_and_logits_kl(
                *outputs,
                batch.labels,
                self.vocab_size,
                self.cfg.logits_temperature if with_kl else None,
            )
            ce = self.mean(batch, per_token_ce)
            total = self.cfg.alpha_ce_loss * ce
            parts = {"ce": ce.detach().clone()}
            if with_kl:
                kl = (
                    per_token_kl.float().sum() / len(batch)  # equal rows per micro-batch
                    if self.cfg.logits_kl_reduction == "batchmean"
                    else self.mean(batch, per_token_kl)
                )
                total = total + self.cfg.alpha_logits_distill_loss * kl
                parts["logits_kl"] = kl.detach()
            return total, parts

        return outputs, loss_func

    def _ce_only(self, batch: TokenBatch, per_token):
        ce = self.mean(batch, per_token)
        return self.cfg.alpha_ce_loss * ce, {"ce": ce.detach().clone()}

    def parts(self, micro_batch_records: list[dict]) -> dict[str, float]:
        """This stage's contribution to each reported loss, averaged over the step's
        micro-batches; summing over pipeline stages gives the whole."""
        out = {"ce": 0.0}
        if self.cfg.alpha_logits_distill_loss:
            out["logits_kl"] = 0.0
        for record in micro_batch_records:
            for name, value in record.items():
                out[name] += float(value) / len(micro_batch_records)
        if self.alpha_layer:
            layer = (self.layer_sum / self.accumulation).reshape(1)
            if self.token_share != 1:
                torch.distributed.all_reduce(layer, group=ps.get_tensor_model_parallel_group())
            out["layer"] = float(layer)
        return out

    def total(self, parts: dict[str, float]) -> float:
        cfg = self.cfg
        return (
            cfg.alpha_ce_loss * parts.get("ce", 0.0)
            + self.alpha_layer * parts.get("layer", 0.0)
            + cfg.alpha_logits_distill_loss * parts.get("logits_kl", 0.0)
        )
