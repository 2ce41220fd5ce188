"""Learning-rate schedules, per optimizer step, as closed forms.

`lr_at(schedule, k)` is the learning rate of optimizer step k (0-based: k
steps came before it). It equals what torch.optim.lr_scheduler gives when
`scheduler.step()` is called once after every `optimizer.step()`, with these
twins (T = total steps, W = warmup steps, S = T - W):

    constant   ConstantLR(factor=1.0)
    step       StepLR(step_size, gamma)
    cosine     CosineAnnealingLR(T_max=S, eta_min=0)
    onecycle   OneCycleLR(max_lr=lr, total_steps=T, cycle_momentum=False)
               (pct_start 0.3, cosine annealing, div_factor 25, final_div_factor 1e4)
    warmup W   SequentialLR([LinearLR(start_factor=1/(W+1), total_iters=W), main],
               milestones=[W]): step k < W gets lr * (k+1)/(W+1)

torch computes most of these recursively; the closed forms agree to about
1e-15 relative. The lr is a pure function of the step, so a resumed run gets
the same rates, and it reaches the step graph as the runtime scalar `optim.lr`
(changing it never regenerates code).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ember.ir.loc import DSLError

SCHEDULES = ("constant", "step", "cosine", "onecycle")
PCT_START, DIV_FACTOR, FINAL_DIV_FACTOR = 0.3, 25.0, 1e4  # OneCycleLR's defaults


@dataclass(frozen=True)
class Schedule:
    """A schedule over `total` optimizer steps; `step_size` 0 means a third of
    the steps after warmup (StepLR's usual 30-of-90 epochs)."""

    kind: str
    lr: float
    total: int
    warmup: int = 0
    step_size: int = 0
    gamma: float = 0.1

    def __post_init__(self) -> None:
        if self.kind not in SCHEDULES:
            raise DSLError(f"unknown schedule '{self.kind}'; expected one of "
                           f"{', '.join(SCHEDULES)}")
        if self.kind == "onecycle" and self.warmup:
            raise DSLError("--schedule onecycle warms up by itself (the first 30% of the "
                           "steps); drop --warmup")


def lr_at(s: Schedule, k: int) -> float:
    """The learning rate of optimizer step k (0-based)."""
    if k < s.warmup:
        return s.lr * (k + 1) / (s.warmup + 1)
    j, span = k - s.warmup, max(1, s.total - s.warmup)
    if s.kind == "step":
        return s.lr * s.gamma ** (j // (s.step_size or max(1, span // 3)))
    if s.kind == "cosine":
        return s.lr * (1 + math.cos(math.pi * j / span)) / 2
    if s.kind == "onecycle":
        return _one_cycle(s.lr, s.total, k)
    return s.lr


def _one_cycle(max_lr: float, total: int, k: int) -> float:
    """OneCycleLR's two phases: cosine from max_lr/25 up to max_lr over the
    first 30% of the steps, then down to max_lr/25/1e4 at the last step."""
    if k >= total:
        raise DSLError(f"onecycle is defined for steps 0..{total - 1}, not step {k}")
    start = max_lr / DIV_FACTOR
    end1, end2 = PCT_START * total - 1, float(total - 1)
    if k <= end1:
        return _cos_anneal(start, max_lr, k / end1)
    return _cos_anneal(max_lr, start / FINAL_DIV_FACTOR, (k - end1) / (end2 - end1))


def _cos_anneal(start: float, end: float, pct: float) -> float:
    return end + (start - end) / 2.0 * (math.cos(math.pi * pct) + 1)
