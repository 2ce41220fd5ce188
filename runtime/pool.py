"""A buffer pool for generated launchers: freed buffers are handed out again
to later allocations of the same size and dtype, so a model's intermediates
share memory once their last reader has run."""

from __future__ import annotations

import math
from collections import defaultdict

import torch


class Pool:
    def __init__(self, device: torch.device | str = "cpu"):
        self.device = torch.device(device)
        self.free_list: dict[tuple[int, torch.dtype], list[torch.Tensor]] = defaultdict(list)
        self.allocated = 0   # fresh allocations, for tests and reports
        self.reused = 0

    def empty(self, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        key = (math.prod(shape), dtype)
        if self.free_list[key]:
            self.reused += 1
            return self.free_list[key].pop().view(shape)
        self.allocated += 1
        return torch.empty(shape, dtype=dtype, device=self.device)

    def free(self, t: torch.Tensor) -> None:
        bucket = self.free_list[(t.numel(), t.dtype)]
        assert all(f is not t for f in bucket), "a buffer was freed twice"
        bucket.append(t)


CANARY = 12345.0


class GuardedPool(Pool):
    """A pool whose buffers sit between canary-filled guard zones.

    Triton's interpreter copies whole tensors, so an unmasked out-of-bounds
    store lands silently in neighbouring memory; here it lands in a guard zone,
    and `check()` names the buffer whose canaries were overwritten.
    """

    def __init__(self, device: torch.device | str = "cpu", guard: int = 1024):
        super().__init__(device)
        self.guard = guard
        self.blocks: list[tuple[torch.Tensor, int]] = []

    def empty(self, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        n = math.prod(shape)
        block = torch.full((n + 2 * self.guard,), _canary(dtype), dtype=dtype, device=self.device)
        self.blocks.append((block, n))
        self.allocated += 1
        return block[self.guard:self.guard + n].view(shape)

    def free(self, t: torch.Tensor) -> None:
        pass  # never reuse: a late write into a reused buffer would hide

    def check(self) -> list[str]:
        """Descriptions of every buffer whose guard zones were written."""
        bad = []
        for k, (block, n) in enumerate(self.blocks):
            c = _canary(block.dtype)
            before, after = block[:self.guard], block[self.guard + n:]
            if not (bool((before == c).all()) and bool((after == c).all())):
                bad.append(f"buffer {k} ({n} x {block.dtype}) was written out of bounds")
        return bad


def _canary(dtype: torch.dtype) -> float | int | bool:
    if dtype == torch.bool:
        return True
    return CANARY if dtype.is_floating_point else 12345
