"""megatron's tensor-parallel linears, with the local product as torch's own `F.linear`.

Where a linear needs no communication inside its matmul's autograd (no sequence parallelism, no
overlapped data-gradient all-reduce, no fused gradient accumulation: a row-parallel linear without
SP at any TP size, a column-parallel one at TP=1), megatron-core still runs it through its Python
autograd function, whose backward costs about 0.2 ms of host time per call. `F.linear` computes
the same products in C++ autograd; everything else (parameters, their names and TP attributes,
the communication around the product, checkpoint sharding) stays megatron's. Under megatron's
DDP the weight's gradient is added straight into its gradient buffer (parallel/weight_grad.py).

An input that is not contiguous (a mixer's output transposed from [b, d, l] to [l, b, d]) is
copied first: without gradients to take (a frozen reference or teacher, evaluation) torch's
matmul would otherwise run it as a batched product over the weight expanded per position, 8×
slower than the copy and one product (measured on the DPO benchmark's reference forward).
"""

from __future__ import annotations

import torch.nn.functional as F
from megatron.core.tensor_parallel import ColumnParallelLinear, RowParallelLinear

from megatron_mamba import kernels
from megatron_mamba.parallel import weight_grad


class _LocalProductWhenPossible:
    def _forward_impl(
        self,
        input,
        weight,
        bias=None,
        gradient_accumulation_fusion=False,
        allreduce_dgrad=False,
        sequence_parallel=False,
        grad_output_buffer=None,
        **kwargs,
    ):
        input = input.contiguous()
        if self._is_local(
            gradient_accumulation_fusion, allreduce_dgrad, sequence_parallel, grad_output_buffer
        ):
            if weight is getattr(self, "weight", None):  # not a tied output layer's
                return weight_grad.linear(input, weight, bias)
            return F.linear(input, weight, bias)
        return super()._forward_impl(
            input,
            weight,
            bias=bias,
            gradient_accumulation_fusion=gradient_accumulation_fusion,
            allreduce_dgrad=allreduce_dgrad,
            sequence_parallel=sequence_parallel,
            grad_output_buffer=grad_output_buffer,
            **kwargs,
        )

    @staticmethod
    def _is_local(
        gradient_accumulation_fusion=False,
        allreduce_dgrad=False,
        sequence_parallel=False,
        grad_output_buffer=None,
        **_,
    ) -> bool:
        """Whether `_forward_impl` with these arguments communicates nothing in its product."""
        return not (
            gradient_accumulation_fusion
            or allreduce_dgrad
            or sequence_parallel
            or grad_output_buffer is not None
        )


class ColumnLinear(_LocalProductWhenPossible, ColumnParallelLinear):
    """megatron's ColumnParallelLinear; the product in `F.linear` where it communicates nothing."""


class OutputLinear(ColumnLinear):
    """The output layer: where its product is local, the logits [s, b, vocabulary] are a view of
    batch-first storage. megatron's GPTModel returns them batch-first (`transpose(0, 1)
    .contiguous()`), and the loss reads them batch-first too: computed in that order, neither is
    a copy (a [tokens, vocabulary] copy is ~1 ms on an H200 for 8192 tokens of Pythia's
    vocabulary, and a distillation step made four: the student's and the teacher's logits, and
    the gradient back)."""

    def _forward_impl(self, input, weight, bias=None, **kwargs):
        if not (self._is_local(**kwargs) and input.dim() == 3):
            return super()._forward_impl(input, weight, bias, **kwargs)
        return super()._forward_impl(input.transpose(0, 1), weight, bias, **kwargs).transpose(0, 1)


class RowLinear(_LocalProductWhenPossible, RowParallelLinear):
    """megatron's RowParallelLinear; the product in `F.linear` where it communicates nothing.

    On one TP rank, with `skip_bias_add`, the bias is added in the product (`addmm`'s epilogue,
    one rounding) and returned as None, rather than returned for the block to add: one pass over
    the [tokens, hidden] output less per linear (GPTNeoX's dense and fc2: ~1.5 ms a step on
    Pythia-1b). With more ranks the bias must follow the all-reduce, as megatron has it. Where
    the block's residual sum is one kernel (kernels/residual_sum.py, on GPU) the bias is returned
    as megatron returns it: that kernel adds it in its one pass, and with GPTNeoX's parallel
    residual both biases' gradient is then one sum over tokens, not one per `addmm`."""

    def forward(self, input_):
        if not self._bias_in_product():
            return super().forward(input_)
        output = self._forward_impl(
            input=input_,
            weight=self.weight,
            bias=self.bias,
            gradient_accumulation_fusion=self.gradient_accumulation_fusion,
            allreduce_dgrad=False,
            sequence_parallel=False,
            tp_group=None,
            grad_output_buffer=None,
        )
        return output, None

    def _bias_in_product(self) -> bool:
        return (
            self.bias is not None
            and self.skip_bias_add
            and kernels.triton_residual_sum(self.bias) is None
            and self.input_is_parallel
            and not self.sequence_parallel
            and not self.explicit_expert_comm
            and self.config._cpu_offloading_context is None
            and self.input_size_per_partition == self.input_size  # one TP rank
        )
