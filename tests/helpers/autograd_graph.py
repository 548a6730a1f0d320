"""What an autograd graph holds, for tests that check which path a computation took."""

from __future__ import annotations

import torch


def autograd_nodes(tensor: torch.Tensor) -> set[str]:
    """The names of every node in `tensor`'s backward graph (e.g. "AddmmBackward0")."""
    names, visited, todo = set(), set(), [tensor.grad_fn]
    while todo:
        node = todo.pop()
        # visited by identity: two nodes of one name (two AddBackward0) lead to different places
        if node is not None and node not in visited:
            visited.add(node)
            names.add(node.name())
            todo.extend(next_node for next_node, _ in node.next_functions)
    return names
