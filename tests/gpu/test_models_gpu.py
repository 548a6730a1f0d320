"""On the GPU: our models against transformers in fp32 (TF32 off) and bf16 (fast SDPA kernels)."""

import pytest
import torch

from megatron_mamba.runtime import init_runtime
from tests.helpers.hf_tiny import VOCAB, native_twin, randomize_norms, tiny_gpt_neox, tiny_llama

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def runtime():
    return init_runtime(seed=0)


@pytest.mark.parametrize("make", [tiny_gpt_neox, tiny_llama])
@pytest.mark.parametrize("dtype,tolerance", [(torch.float32, 1e-4), (torch.bfloat16, 3e-2)])
def test_logits_match_transformers_on_gpu(runtime, make, dtype, tolerance):
    torch.backends.cuda.matmul.allow_tf32 = False
    hf = make()
    randomize_norms(hf)
    ours, _ = native_twin(hf)
    hf, ours = hf.to("cuda", dtype), ours.to("cuda", dtype)
    tokens = torch.randint(0, VOCAB, (2, 32), device="cuda")
    with torch.no_grad():
        expected = hf(tokens).logits.float()
        got = ours(tokens, None, None)[..., :VOCAB].float()
    rel = ((got - expected).abs().max() / expected.abs().max()).item()
    assert rel <= tolerance, f"relative error {rel:.2e} in {dtype}"
