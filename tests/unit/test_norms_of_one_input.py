"""Which pairs of norms of one input go to the two-LayerNorm kernel (models/norms.py
`norms_of_one_input`), with a stand-in for the kernel: two LayerNorms of one eps whose
parameters have the input's dtype; anything else to the norms themselves, with their results."""

import pytest
import torch
import torch.nn.functional as F
from megatron.core.transformer.transformer_config import TransformerConfig

from megatron_mamba import kernels
from megatron_mamba.models.norms import LayerNorm, RMSNorm, norms_of_one_input

CONFIG = TransformerConfig(num_layers=1, hidden_size=8, num_attention_heads=1)


@pytest.fixture
def kernel_calls(monkeypatch):
    """The kernel as torch's layer_norm twice, recording each call's `first_batch_first`."""
    calls = []

    def two_layer_norms(x, w1, b1, w2, b2, eps, first_batch_first=False):
        calls.append(first_batch_first)
        width = x.shape[-1:]
        first = F.layer_norm(x, width, w1, b1, eps)
        if first_batch_first:  # as the kernel stores it
            first = first.transpose(0, 1).contiguous().transpose(0, 1)
        return first, F.layer_norm(x, width, w2, b2, eps)

    monkeypatch.setattr(kernels, "triton_two_layer_norms", lambda x: two_layer_norms)
    return calls


def _layer_norm(eps=1e-5, dtype=torch.float32):
    norm = LayerNorm(CONFIG, 8, eps=eps).to(dtype)
    torch.nn.init.normal_(norm.weight)
    torch.nn.init.normal_(norm.bias)
    return norm


@pytest.mark.parametrize(
    "first, second, fused",
    [
        (_layer_norm(), _layer_norm(), True),
        (_layer_norm(1e-5), _layer_norm(1e-6), False),  # one eps for both in the kernel
        (RMSNorm(CONFIG, 8), RMSNorm(CONFIG, 8), False),
        (_layer_norm(), RMSNorm(CONFIG, 8), False),
        (_layer_norm(dtype=torch.float64), _layer_norm(dtype=torch.float64), False),
    ],
    ids=["two-layer-norms", "two-eps", "rms-norms", "mixed", "params-of-another-dtype"],
)
def test_which_pairs_take_the_kernel(kernel_calls, first, second, fused):
    x = torch.randn(3, 2, 8)
    got = norms_of_one_input(x, first, second)
    assert (len(kernel_calls) == 1) == fused
    for out, norm in zip(got, (first, second), strict=True):
        torch.testing.assert_close(out, norm(x))


def test_without_the_kernel_the_norms_run(monkeypatch):
    monkeypatch.setattr(kernels, "triton_two_layer_norms", lambda x: None)
    first, second, x = _layer_norm(), _layer_norm(), torch.randn(4, 8)
    got = norms_of_one_input(x, first, second)
    torch.testing.assert_close(got[0], first(x))
    torch.testing.assert_close(got[1], second(x))


@pytest.mark.parametrize("parallel_residual", [True, False])
def test_gpt_neox_blocks_send_both_norms_at_once_with_the_parallel_residual(
    runtime, kernel_calls, parallel_residual
):
    from tests.helpers.hf_tiny import VOCAB, native_twin, tiny_gpt_neox

    hf = tiny_gpt_neox(parallel_residual=parallel_residual)
    ours, config = native_twin(hf)
    tokens = torch.randint(0, VOCAB, (2, 8))
    with torch.no_grad():
        logits = ours(tokens, None, None)[..., :VOCAB]
        want = hf(tokens).logits
    assert len(kernel_calls) == (config.num_layers if parallel_residual else 0)
    torch.testing.assert_close(logits, want, rtol=1e-5, atol=1e-5)


def test_a_mixer_that_reads_its_input_batch_first_has_it_written_so(
    runtime, kernel_calls, monkeypatch
):
    """GPTNeoX's parallel-residual blocks ask the mixer (`wants_batch_first`; on GPU the
    one-function Mamba1 mixer's at TP=1) and pass the answer to the
    two-LayerNorm kernel; the model's output is the same either way."""
    from megatron_mamba.config import ParallelConfig
    from megatron_mamba.models.build import build_model
    from megatron_mamba.models.mamba1 import Mamba1Mixer
    from megatron_mamba.models.presets import preset

    cfg = preset("tiny-gpt-neox", layer_pattern="MA", mamba={"layout": "classic"})
    model = build_model(cfg, ParallelConfig())
    tokens = torch.randint(0, cfg.vocab_size, (2, 8))
    outputs = []
    for wanted in (False, True):
        monkeypatch.setattr(Mamba1Mixer, "wants_batch_first", lambda self, x, w=wanted: w)
        kernel_calls.clear()
        with torch.no_grad():
            outputs.append(model(tokens, None, None))
        assert kernel_calls == [wanted, False]  # the Mamba1 block's, then the attention block's
    torch.testing.assert_close(outputs[1], outputs[0], rtol=0, atol=0)
