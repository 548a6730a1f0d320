"""On the GPU: a batch moves to the device without waiting for the kernels queued before it
(the trainer's host keeps its lead over the GPU at each micro-batch), and arrives intact."""

import pytest
import torch

from megatron_mamba.data.batches import PreferenceBatch, TokenBatch

pytestmark = pytest.mark.gpu


def _still_busy_after(move) -> bool:
    """Whether the stream still ran a long kernel queued before `move()` when it returned."""
    torch.cuda.synchronize()
    torch.cuda._sleep(2_000_000_000)  # about a second of GPU cycles
    move()
    busy = not torch.cuda.current_stream().query()
    torch.cuda.synchronize()
    return busy


def test_token_rows_move_without_waiting_and_arrive_intact():
    tokens = torch.randint(0, 50000, (4, 2049))
    mask = torch.rand(4, 2048)
    moved = []
    assert _still_busy_after(lambda: moved.append(TokenBatch(tokens, mask).to("cuda")))
    assert moved[0].tokens.is_cuda and moved[0].loss_mask.is_cuda
    torch.testing.assert_close(moved[0].tokens.cpu(), tokens, rtol=0, atol=0)
    torch.testing.assert_close(moved[0].loss_mask.cpu(), mask, rtol=0, atol=0)


def test_preference_pairs_move_without_waiting_and_arrive_intact():
    chosen, rejected = (TokenBatch(torch.randint(0, 100, (2, 17))) for _ in range(2))
    reference = torch.randn(2, 2)
    moved = []
    batch = PreferenceBatch(chosen, rejected, reference)
    assert _still_busy_after(lambda: moved.append(batch.to("cuda")))
    torch.testing.assert_close(moved[0].chosen.tokens.cpu(), chosen.tokens, rtol=0, atol=0)
    torch.testing.assert_close(moved[0].rejected.tokens.cpu(), rejected.tokens, rtol=0, atol=0)
    torch.testing.assert_close(moved[0].reference.cpu(), reference, rtol=0, atol=0)
