"""Device tables that let one kernel launch walk a list of tensors block by block.

Program i of the launch updates elements [block_start[i], block_start[i] + block) of tensor
block_tensor[i]. Tensors are reached from each list's first tensor (its anchor, passed to the
kernel as a pointer): `offsets` holds, one row per list (e.g. parameters, gradients, moments,
then per-tensor scalars such as step counts), each tensor's distance from its anchor in
elements. A pointer argument lets Triton know its alignment, which an address read from memory
would not; with `aligned`, offsets may be declared multiples of 16 bytes and memory accessed
16 bytes at a time. The tables are made again only when an address changes (new optimizer
state, a checkpoint load).
"""

from __future__ import annotations

import torch


class TensorBlocks:
    def __init__(self):
        self.key: tuple[int, ...] | None = None
        self.offsets = self.numels = self.block_tensor = self.block_start = None
        self.aligned = False
        """Whether every address of the blocked lists is a multiple of 16 bytes and every size a
        multiple of 8 elements (so a kernel may load and store 16 bytes at a time, and mask 8
        elements at a time)."""

    def update(
        self,
        blocked: tuple[list[torch.Tensor], ...],
        block: int,
        scalars: tuple[list[torch.Tensor], ...] = (),
    ) -> None:
        """Tables for the `blocked` lists (each as long as the first, the first giving the
        sizes) in blocks of `block` elements, with offset rows for the `scalars` lists after
        theirs, on the first tensor's device. Each list's tensors share one dtype."""
        lists = (*blocked, *scalars)
        key = (block, *(t.data_ptr() for tensors in lists for t in tensors))
        if key == self.key:
            return
        first = blocked[0]
        device, count = first[0].device, len(first)
        if any(len(tensors) != count for tensors in lists):
            raise ValueError(f"lists of {[len(t) for t in lists]} tensors; expected {count} each")
        rows = []
        for tensors in lists:
            anchor, size = tensors[0].data_ptr(), tensors[0].element_size()
            distances = [t.data_ptr() - anchor for t in tensors]
            if any(d % size for d in distances):
                dtype = tensors[0].dtype
                raise ValueError(f"tensors of {dtype} lie a fraction of an element apart")
            rows.append([d // size for d in distances])
        numels = torch.tensor([t.numel() for t in first], dtype=torch.int64)
        blocks = (numels + block - 1) // block
        self.offsets = torch.tensor(rows, dtype=torch.int64)
        self.numels = numels
        self.block_tensor = torch.arange(count).repeat_interleave(blocks).to(torch.int32)
        first_block = torch.cumsum(blocks, 0) - blocks
        index = torch.arange(int(blocks.sum()))
        self.block_start = (index - first_block.repeat_interleave(blocks)) * block
        for name in ("offsets", "numels", "block_tensor", "block_start"):
            setattr(self, name, getattr(self, name).to(device))
        blocked_tensors = [t for tensors in blocked for t in tensors]
        self.aligned = all(t.numel() % 8 == 0 for t in blocked_tensors) and all(
            t.data_ptr() % 16 == 0 for t in blocked_tensors
        )
        self.key = key
