"""The block MLP: GeLU with biases (GPTNeoX) or SwiGLU without (Llama), tensor-parallel.

Like megatron's MLP (same parameter names, column- then row-parallel). fc1's bias: on one TP rank
without sequence parallelism it is added inside fc1's product (`addmm`'s epilogue) and torch's
GeLU follows, as transformers runs it; the profile of the attention benchmark (benchmarks/
RESULTS.md) had that GEMM at 350 µs a call where the product without its bias took 381 µs on
another kernel, and torch's GeLU at 91 µs where our bias + GeLU kernel took 115. Elsewhere (TP > 1
or SP: megatron's linear would add the bias in a pass of its own) the bias and the activation
run as one kernel each way (kernels/bias_gelu.py). With MEGATRON_MAMBA_PENDING_KERNELS=1, on one
rank fc1 and GeLU run as one autograd function whose backward takes the bias's gradient in GeLU's
backward kernel (models/linear_gelu.py). fc2's bias goes to the block's residual sum, or on one
rank into its own product (models/linear.RowLinear).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from megatron.core.transformer.module import MegatronModule
from megatron.core.transformer.transformer_config import TransformerConfig

from megatron_mamba import kernels
from megatron_mamba.models.fused import bias_gelu, swiglu
from megatron_mamba.models.linear import ColumnLinear, RowLinear
from megatron_mamba.models.linear_gelu import linear_gelu


class MLP(MegatronModule):
    def __init__(self, config: TransformerConfig, **_unused):
        super().__init__(config=config)
        glu = config.gated_linear_unit
        if glu and config.activation_func is not F.silu:
            raise ValueError("gated MLP supports SwiGLU (silu) only")
        if not glu and config.activation_func is not F.gelu:
            raise ValueError("non-gated MLP supports exact GeLU only")
        ffn = config.ffn_hidden_size
        one_rank = config.tensor_model_parallel_size == 1 and not config.sequence_parallel
        self._fc1_gelu_one_function = one_rank and not glu and config.add_bias_linear
        self.linear_fc1 = ColumnLinear(
            config.hidden_size,
            2 * ffn if glu else ffn,
            config=config,
            init_method=config.init_method,
            bias=config.add_bias_linear,
            gather_output=False,
            skip_bias_add=not one_rank,  # on one rank: the bias inside the product
        )
        self.linear_fc2 = RowLinear(
            ffn,
            config.hidden_size,
            config=config,
            init_method=config.output_layer_init_method,
            bias=config.add_bias_linear,
            input_is_parallel=True,
            skip_bias_add=True,
        )
        if glu:
            # Each TP rank holds [gate_r; up_r]: a stride-2 split of the whole [gate; up].
            for param in self.linear_fc1.parameters():
                param.partition_stride = 2

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        if self._fc1_gelu_one_function and kernels.pending_kernels():
            fc1 = self.linear_fc1
            return self.linear_fc2(linear_gelu(x, fc1.weight, fc1.bias))
        hidden, bias = self.linear_fc1(x)
        if self.config.gated_linear_unit:
            hidden = swiglu(hidden if bias is None else hidden + bias)
        elif bias is not None:
            hidden = bias_gelu(hidden, bias)
        else:
            hidden = F.gelu(hidden)
        return self.linear_fc2(hidden)
