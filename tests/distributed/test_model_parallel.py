"""Our models at TP=2, PP=2, TP2×PP2 and with SP give the single-process logits and gradients."""

from pathlib import Path

import pytest
import torch

from megatron_mamba.parallel.shards import merge_shards
from tests.distributed.launch import torchrun

WORKER = Path(__file__).parent / "workers" / "model_step.py"


def _run(tmp: Path, kind: str, tp: int, pp: int, sp: bool = False, full_state=None):
    out = tmp / f"{kind}-tp{tp}pp{pp}{'sp' if sp else ''}"
    out.mkdir()
    extra = [str(full_state)] if full_state else []
    torchrun(WORKER, tp * pp, kind, str(tp), str(pp), "sp" if sp else "-", str(out), *extra)
    ranks = [torch.load(out / f"rank{r}.pt", weights_only=True) for r in range(tp * pp)]
    last = [r for r in ranks if r["losses"]]
    grads = merge_shards([r["grads"] for r in ranks], [r["tp_rank"] for r in ranks])
    return last, grads, out


@pytest.fixture(scope="module")
def references(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("models")
    return {k: _run(tmp, k, 1, 1) for k in ("gpt_neox", "llama_tied")}, tmp


CASES = [
    ("gpt_neox", 2, 1, False),
    ("gpt_neox", 1, 2, False),
    ("gpt_neox", 2, 2, False),
    ("gpt_neox", 2, 1, True),
    ("llama_tied", 2, 1, True),
    ("llama_tied", 2, 2, False),
]


@pytest.mark.parametrize("kind,tp,pp,sp", CASES)
def test_parallel_matches_single_process(references, kind, tp, pp, sp):
    refs, tmp = references
    (ref_rank,), ref_grads, ref_out = refs[kind]
    last, grads, _ = _run(tmp, kind, tp, pp, sp, full_state=ref_out / "full.pt")
    assert len(last) == tp
    for rank in last:
        for got, expected in zip(rank["logits"], ref_rank["logits"], strict=True):
            torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(torch.stack(rank["losses"]), torch.stack(ref_rank["losses"]))
    assert grads.keys() == ref_grads.keys()
    for name, grad in grads.items():
        torch.testing.assert_close(grad, ref_grads[name], rtol=1e-4, atol=1e-6, msg=name)
