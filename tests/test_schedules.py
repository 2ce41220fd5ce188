"""Every schedule's lr at every step equals torch.optim.lr_scheduler's.

The twin is stepped once per optimizer step, as `ember train` does; torch
updates most rates recursively, so equality is to 1e-12 relative.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch.optim import lr_scheduler as L

from ember.ir.loc import DSLError
from ember.runtime.schedules import Schedule, lr_at


def _torch_main(s: Schedule, opt: torch.optim.Optimizer) -> L.LRScheduler:
    span = max(1, s.total - s.warmup)
    if s.kind == "step":
        return L.StepLR(opt, s.step_size or max(1, span // 3), s.gamma)
    if s.kind == "cosine":
        return L.CosineAnnealingLR(opt, T_max=span)
    if s.kind == "onecycle":
        return L.OneCycleLR(opt, max_lr=s.lr, total_steps=s.total, cycle_momentum=False)
    return L.ConstantLR(opt, factor=1.0)


def torch_lrs(s: Schedule) -> list[float]:
    """The lr torch's optimizer uses at each of s.total steps."""
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=s.lr)
    sched = _torch_main(s, opt)
    if s.warmup:
        warm = L.LinearLR(opt, start_factor=1 / (s.warmup + 1), total_iters=s.warmup)
        sched = L.SequentialLR(opt, [warm, _torch_main(s, opt)], milestones=[s.warmup])
    out = []
    for _ in range(s.total):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


CASES = [Schedule("constant", 0.1, 20), Schedule("constant", 0.1, 20, warmup=5),
         Schedule("step", 3e-3, 30), Schedule("step", 0.5, 25, step_size=4, gamma=0.5),
         Schedule("step", 0.1, 40, warmup=7, step_size=6),
         Schedule("cosine", 3e-3, 50), Schedule("cosine", 3e-3, 50, warmup=10),
         Schedule("cosine", 1.0, 3, warmup=5),  # warmup longer than the run
         Schedule("onecycle", 0.01, 100), Schedule("onecycle", 0.01, 7),
         Schedule("onecycle", 0.01, 2)]


@pytest.mark.parametrize("s", CASES, ids=lambda s: f"{s.kind}-T{s.total}-W{s.warmup}")
def test_lr_equals_torch_at_every_step(s: Schedule) -> None:
    ours = [lr_at(s, k) for k in range(s.total)]
    for k, (a, b) in enumerate(zip(ours, torch_lrs(s))):
        assert math.isclose(a, b, rel_tol=1e-12, abs_tol=1e-15), (k, a, b)


def test_schedules_change_the_lr() -> None:
    """The closed forms are not all constant: cosine ends near 0, warmup starts low."""
    s = Schedule("cosine", 1.0, 100, warmup=10)
    assert lr_at(s, 0) == pytest.approx(1 / 11)
    assert lr_at(s, 10) == 1.0
    assert lr_at(s, 99) < 1e-3


def test_onecycle_with_warmup_is_refused() -> None:
    with pytest.raises(DSLError, match="warms up by itself"):
        Schedule("onecycle", 0.1, 10, warmup=3)
