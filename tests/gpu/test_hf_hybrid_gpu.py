"""On the GPU machine: the transformers classes of hybrid exports on CUDA, where their Mamba
layers run mamba_ssm's fused kernels (classic Mamba1 through mamba_inner_fn for a whole
sequence), against the same models on the CPU (the reference kernels), in fp32: a forward, a
left-padded forward, and greedy generation with the cache."""

import pytest
import torch

from tests.unit.test_hf_hybrid import _GREEDY, HYBRIDS, _left_padded, _model, _rows

pytestmark = pytest.mark.gpu
TF32 = 3e-3


def _relative(got: torch.Tensor, expected: torch.Tensor) -> float:
    return float((got.cpu() - expected).norm() / expected.norm())


@pytest.mark.parametrize("name", list(HYBRIDS))
def test_on_cuda_the_forward_matches_the_cpu_and_cached_generation_the_forward(name):
    cpu = _model(name)
    cuda = _model(name).cuda()
    ids = torch.stack(_rows(lengths=(12, 12)))
    padded, mask = _left_padded(_rows())
    with torch.no_grad():
        # the Triton/CUDA kernels multiply in TF32 inside, and the weights here are O(1) (the
        # mixers' own GPU tests take 1e-3; mamba2 only, two layers of it, was seen at 1.3e-3)
        assert _relative(cuda(ids.cuda()).logits, cpu(ids).logits) <= TF32
        got = cuda(padded.cuda(), attention_mask=mask.cuda()).logits
        expected = cpu(padded, attention_mask=mask).logits
        real = mask.bool()
        assert _relative(got[real.cuda()], expected[real]) <= TF32
        # generation with the cache (one-token steps) against a full forward over its output
        out = cuda.generate(padded.cuda(), attention_mask=mask.cuda(), max_new_tokens=6, **_GREEDY)
        whole = torch.cat([mask.cuda(), torch.ones(len(mask), 6, device="cuda").long()], 1)
        full = cuda(out.sequences, attention_mask=whole).logits
    for step, logits in enumerate(out.logits):
        position = padded.shape[1] - 1 + step
        assert _relative(logits, full[:, position].cpu()) <= TF32, step
