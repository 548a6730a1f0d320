"""Our models, all-attention and hybrid (Mamba1/Mamba2 layers in both layouts), at TP=2, PP=2,
TP2×PP2 and with SP give the single-process logits and gradients; so does the hybrid with its
Mamba1 mixers as one function (kernels/mamba1_fused.py, over reference stand-ins for the CUDA
kernels)."""

from pathlib import Path

import pytest
import torch

from megatron_mamba.parallel.shards import merge_shards
from tests.distributed.launch import torchrun

WORKER = Path(__file__).parent / "workers" / "model_step.py"


def _run(tmp: Path, kind: str, tp: int, pp: int, sp=False, full_state=None, dp: int = 1, cpu=True):
    out = tmp / f"{kind}-tp{tp}pp{pp}dp{dp}{'sp' if sp else ''}"
    out.mkdir()
    extra = [str(full_state)] if full_state else []
    world = tp * pp * dp
    args = (kind, str(tp), str(pp), "sp" if sp else "-", str(out), *extra)
    torchrun(WORKER, world, *args, cpu=cpu)
    ranks = [torch.load(out / f"rank{r}.pt", weights_only=True) for r in range(world)]
    last = [r for r in ranks if r["losses"]]
    replica = [r for r in ranks if r["dp_rank"] == 0]
    grads = merge_shards([r["grads"] for r in replica], [r["tp_rank"] for r in replica])
    return last, grads, out


@pytest.fixture(scope="module")
def references(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("models")
    kinds = ("gpt_neox", "llama_tied", "gpt_neox_hybrid", "llama_hybrid")
    return {k: _run(tmp, k, 1, 1) for k in kinds}, tmp


CASES = [
    ("gpt_neox", 2, 1, False),
    ("gpt_neox", 1, 2, False),
    ("gpt_neox", 2, 2, False),
    ("gpt_neox", 2, 1, True),
    ("llama_tied", 2, 1, True),
    ("llama_tied", 2, 2, False),
    ("gpt_neox_hybrid", 2, 1, False),
    ("gpt_neox_hybrid", 2, 1, True),
    ("gpt_neox_hybrid", 1, 2, False),
    ("llama_hybrid", 2, 1, True),
    ("llama_hybrid", 2, 2, False),
]


@pytest.mark.parametrize("kind,tp,pp,sp", CASES)
def test_parallel_matches_single_process(references, kind, tp, pp, sp):
    refs, tmp = references
    (ref_rank,), ref_grads, ref_out = refs[kind]
    last, grads, _ = _run(tmp, kind, tp, pp, sp, full_state=ref_out / "full.pt")
    _assert_matches(last, grads, ref_rank, ref_grads, tp)


@pytest.mark.parametrize("tp,pp,sp", [(1, 1, False), (2, 1, False), (2, 1, True), (2, 2, False)])
@pytest.mark.parametrize("kind", ["gpt_neox_hybrid", "llama_hybrid"])
def test_one_function_mamba1_matches_single_process(references, kind, tp, pp, sp):
    """The hybrids' Mamba1 mixers (classic in gpt_neox_hybrid, MambaInLlama's grouped layout in
    llama_hybrid) as one function, with its input gathered and output reduced around it under
    TP and SP (and inside, the classic x_proj's sums, the grouped dt_proj_down's gradient),
    against the single-process model on the composed path."""
    refs, tmp = references
    (ref_rank,), ref_grads, ref_out = refs[kind]
    last, grads, out = _run(tmp, f"{kind}_fused", tp, pp, sp, ref_out / "full.pt")
    calls = [torch.load(p, weights_only=True)["one_function_calls"] for p in out.glob("rank*.pt")]
    assert all(calls), calls  # every stage holds a mamba1 layer ("MASM", "SMAM")
    _assert_matches(last, grads, ref_rank, ref_grads, tp)


def _assert_matches(last, grads, ref_rank, ref_grads, tp):
    assert len(last) == tp
    for rank in last:
        for got, expected in zip(rank["logits"], ref_rank["logits"], strict=True):
            torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(torch.stack(rank["losses"]), torch.stack(ref_rank["losses"]))
    assert grads.keys() == ref_grads.keys()
    for name, grad in grads.items():
        torch.testing.assert_close(grad, ref_grads[name], rtol=1e-4, atol=1e-6, msg=name)
        # Relative to the tensor's own size too: some gradients are far below atol.
        relative = (grad - ref_grads[name]).norm() / ref_grads[name].norm().clamp_min(1e-30)
        assert relative <= 1e-5, f"{name}: relative gradient error {float(relative):.2e}"


def test_data_parallel_replicas_average_to_the_single_process_gradients(references):
    refs, tmp = references
    (ref_rank,), ref_grads, ref_out = refs["gpt_neox"]
    last, grads, _ = _run(tmp, "gpt_neox", 1, 1, full_state=ref_out / "full.pt", dp=2)
    # megatron's schedule reports each micro-batch's loss divided by the micro-batch count (2 in
    # the single process, 1 in each replica).
    losses = sorted(float(r["losses"][0]) / 2 for r in last)
    assert losses == pytest.approx(sorted(float(x) for x in ref_rank["losses"]), rel=1e-5)
    for name, grad in grads.items():
        torch.testing.assert_close(grad, ref_grads[name], rtol=1e-4, atol=1e-6, msg=name)
