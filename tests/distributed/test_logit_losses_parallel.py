"""CE and KL over vocab-parallel logits at TP=2 and TP=4 (gloo) equal torch's on the whole
logits, values and gradient slices, also with a rank that holds only padding."""

from pathlib import Path

import pytest

from tests.distributed.launch import torchrun

WORKER = Path(__file__).parent / "workers" / "logit_losses_tp.py"


@pytest.mark.parametrize(
    "tp,vocab,padded",
    [(2, 11, 16), (4, 13, 16), (4, 3, 16)],
    ids=["tp2", "tp4-uneven", "tp4-padding-only-ranks"],
)
def test_vocab_parallel_losses_match_torch(tp, vocab, padded):
    out = torchrun(WORKER, tp, str(vocab), str(padded))
    assert out.count(": ok") == tp
