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
        self.free_list[(t.numel(), t.dtype)].append(t)
