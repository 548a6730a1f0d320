"""The test helper that says which path a computation took (tests/helpers/autograd_graph.py)."""

import torch

from tests.helpers.autograd_graph import autograd_nodes


def test_nodes_below_a_second_node_of_the_same_name_are_found():
    # two AddBackward0 nodes: the exp hangs below the inner one only (a walk that skipped
    # names it had seen missed it, and with it the two-LayerNorm kernel's node in GPTNeoX)
    x = torch.randn(3, requires_grad=True)
    out = (x + 1) * 2 + ((x * 3).exp() + 1)
    assert {"AddBackward0", "MulBackward0", "ExpBackward0"} <= autograd_nodes(out)
