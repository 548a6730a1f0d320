"""CE and KL over vocab-parallel logits at TP=2 and TP=4 (gloo) equal torch's on the whole
logits, values and gradient slices, also with a rank that holds only padding, in one chunk of
rows and in chunks of a few rows (each rank holding a different number of real columns)."""

from pathlib import Path

import pytest

from tests.distributed.launch import torchrun

WORKER = Path(__file__).parent / "workers" / "logit_losses_tp.py"


@pytest.mark.parametrize("chunk", [2**25, 20], ids=["one-chunk", "chunks"])
@pytest.mark.parametrize(
    "tp,vocab,padded",
    [(2, 11, 16), (4, 13, 16), (4, 3, 16)],
    ids=["tp2", "tp4-uneven", "tp4-padding-only-ranks"],
)
def test_vocab_parallel_losses_match_torch(tp, vocab, padded, chunk):
    out = torchrun(WORKER, tp, str(vocab), str(padded), str(chunk))
    assert out.count(": ok") == tp
