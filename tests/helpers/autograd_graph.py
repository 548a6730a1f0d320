"""What an autograd graph holds, for tests that check which path a computation took."""

from __future__ import annotations

import torch


def autograd_nodes(tensor: torch.Tensor) -> set[str]:
    """The names of every node in `tensor`'s backward graph (e.g. "AddmmBackward0")."""
    seen, todo = set(), [tensor.grad_fn]
    while todo:
        node = todo.pop()
        if node is not None and node.name() not in seen:
            seen.add(node.name())
            todo.extend(next_node for next_node, _ in node.next_functions)
    return seen
