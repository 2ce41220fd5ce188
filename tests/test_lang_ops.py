"""The composite builtins of lang/{math,layout,nn}_builtins.py, einsum.py and topk.py,
three ways each.

Each case is one expression over named inputs and the same computation in
torch. It is checked

* on the oracle in float64 against torch in float64 (rtol = atol = 1e-12, the
  harness of tests/test_ops_vs_torch.py: both sides compute in double precision);
* through the generated Triton kernels (Triton's CPU interpreter here) against
  the oracle, in float32 (tolerance 1e-4, `ember.backends.tolerance`) and, for
  cases marked f64, in float64 (1e-10), with guarded buffers whose canaries must
  survive (the harness of tests/test_triton_ops.py); sizes of 7, 33 and 9 x 33
  leave partial tiles;
* for float results, their gradient with respect to every float input, on the
  oracle in float64, against torch.autograd (1e-10 of the largest gradient) and
  central finite differences (the harness of tests/test_grad_ops.py). Inputs of
  kind "away" keep |x| >= 0.2 from a kink at 0; "grid" draws distinct values so
  that no max ties; "large" (|x| up to 60, torch's softplus threshold path) is
  used for values only.

Every builtin defined in those three files must have a case here.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
import test_grad_ops as grad_harness
import test_ops_vs_torch as torch_harness
import test_triton_ops as triton_harness
import torch
import torch.nn.functional as F

from ember.lang import einsum, layout_builtins, math_builtins, nn_builtins, topk
from ember.lang.builtins import BUILTINS

Spec = Callable[[np.random.Generator], np.ndarray]


def draw(kind: str | int, shape: tuple[int, ...]) -> Spec:
    """Inputs of a kind the grad harness understands too (an int n: i32 in [0, n))."""
    def make(rng: np.random.Generator) -> np.ndarray:
        r = rng.standard_normal(shape)
        if isinstance(kind, int):
            return rng.integers(0, kind, shape).astype(np.int32)
        if kind == "away":
            return np.sign(r) * (0.2 + np.abs(r))
        if kind == "positive":
            return 0.5 + np.abs(r)
        if kind == "grid":
            return rng.permutation(int(np.prod(shape))).reshape(shape) * 0.001 - 0.5
        if kind == "large":
            return r * 30.0
        if kind == "signed":  # i32 in [-50, 50], zero included
            return rng.integers(-50, 51, shape).astype(np.int32)
        if kind == "divisor":  # i32 in [-7, 7] without 0
            return (rng.integers(1, 8, shape) * rng.choice([-1, 1], shape)).astype(np.int32)
        return r
    return make


@dataclass(frozen=True)
class Case:
    expr: str
    torch_fn: Callable[..., Any]
    inputs: dict[str, tuple[str | int, tuple[int, ...]]]
    f64: bool = False     # also through the kernels in float64
    grad: bool = True     # float result: check its gradient
    train: bool = False

    @property
    def id(self) -> str:
        shapes = ", ".join(f"{k}{list(s)}" for k, (_, s) in self.inputs.items())
        return f"{self.expr} [{shapes}]"

    def specs(self) -> dict[str, Spec]:
        return {k: draw(kind, shape) for k, (kind, shape) in self.inputs.items()}


def c(expr: str, torch_fn: Callable[..., Any], *, f64: bool = False, grad: bool = True,
      train: bool = False, **inputs: tuple[str | int, tuple[int, ...]]) -> Case:
    return Case(expr, torch_fn, inputs, f64, grad, train)


X = ("normal", (3, 7, 5))
ROW = ("normal", (9, 33))
AWAY = ("away", (9, 33))
IMAGE = ("grid", (2, 3, 8, 7))

CASES = [
    # statistics
    c("var(x, axis=1)", lambda x: torch.var(x, dim=1), x=X, f64=True),
    c("var(x)", torch.var, x=X),
    c("var(x, axis=(0, 2), keepdims=true, correction=0)",
      lambda x: torch.var(x, dim=(0, 2), keepdim=True, correction=0), x=X),
    c("std(x, axis=-1)", lambda x: torch.std(x, dim=-1), x=ROW, f64=True),
    c("std(x, axis=(0, 1), correction=2)", lambda x: torch.std(x, dim=(0, 1), correction=2),
      x=X),
    # activations
    c("clamp(x, min=-0.5, max=0.5)", lambda x: torch.clamp(x, -0.5, 0.5), x=ROW),
    c("clamp(x, min=-0.5)", lambda x: torch.clamp(x, min=-0.5), x=ROW),
    c("clamp(x, max=hi)", lambda x, hi: torch.clamp(x, max=hi), x=ROW, hi=("normal", (33,))),
    c("silu(x)", F.silu, x=ROW, f64=True),
    c("softplus(x)", F.softplus, x=ROW, f64=True),
    c("softplus(x, beta=2.0, threshold=5.0)", lambda x: F.softplus(x, 2.0, 5.0), x=ROW),
    c("softplus(x)", F.softplus, x=("large", (9, 33)), grad=False, f64=True),
    c("leaky_relu(x)", F.leaky_relu, x=AWAY),
    c("leaky_relu(x, negative_slope=0.2)", lambda x: F.leaky_relu(x, 0.2), x=AWAY),
    c("elu(x)", F.elu, x=AWAY, f64=True),
    c("elu(x, alpha=0.5)", lambda x: F.elu(x, 0.5), x=("large", (9, 33)), grad=False),
    c("cumsum(x, axis=1)", lambda x: torch.cumsum(x, 1), x=X, f64=True),
    c("cumsum(x)", lambda x: torch.cumsum(x, -1), x=("normal", (33,))),
    # movement
    c("stack(a, b, axis=1)", lambda a, b: torch.stack([a, b], 1), a=ROW, b=ROW),
    c("stack((a, b, a), axis=-1)", lambda a, b: torch.stack([a, b, a], -1), a=X, b=X),
    c("flip(x, (0, 2))", lambda x: torch.flip(x, (0, 2)), x=X),
    c("flip(x, -1)", lambda x: torch.flip(x, (-1,)), x=ROW),
    c("pad(x, (1, 2))", lambda x: F.pad(x, (1, 2)), x=ROW),
    c("pad(x, (1, 2, 0, 3), value=-1.5)", lambda x: F.pad(x, (1, 2, 0, 3), value=-1.5), x=X),
    c("pad(x, (2, -1), value=-inf)", lambda x: F.pad(x, (2, -1), value=-torch.inf), x=ROW,
      grad=False),
    c('pad(x, (2, 1, 1, 0), mode="reflect")',
      lambda x: F.pad(x, (2, 1, 1, 0), mode="reflect"), x=X, f64=True),
    c("split(x, (2, 5, 26), axis=1)", lambda x: torch.split(x, [2, 5, 26], 1), x=ROW),
    c("concat((a, b), axis=1)", lambda a, b: torch.cat([a, b], 1), a=ROW, b=ROW),
    c("concat(split(x, (3, 4), axis=0), axis=0)", lambda x: x, x=("normal", (7, 5))),
    # the inf literal
    c("where(x > 0.0, x, -inf)", lambda x: torch.where(x > 0, x, -torch.inf), x=ROW,
      grad=False),
    c("softmax(where(x > 0.0, x, -inf))",
      lambda x: torch.softmax(torch.where(x > 0, x, -torch.inf), -1), x=AWAY),
    # integer division
    c("a // b", lambda a, b: torch.div(a, b, rounding_mode="floor"), a=("signed", (9, 33)),
      b=("divisor", (9, 33))),
    c("a % b", torch.remainder, a=("signed", (9, 33)), b=("divisor", (9, 33))),
    c("floor_divide(a, 4) + remainder(a, -3)",
      lambda a: torch.div(a, 4, rounding_mode="floor") + torch.remainder(a, -3),
      a=("signed", (129,))),
    # networks
    c("conv1d(x, w, stride=2, padding=1)", lambda x, w: F.conv1d(x, w, stride=2, padding=1),
      x=("normal", (2, 3, 33)), w=("normal", (4, 3, 3)), f64=True),
    c("conv1d(x, w, dilation=2, groups=3)", lambda x, w: F.conv1d(x, w, dilation=2, groups=3),
      x=("normal", (2, 3, 9)), w=("normal", (6, 1, 3))),
    c("adaptive_avg_pool2d(x, 2)", lambda x: F.adaptive_avg_pool2d(x, 2),
      x=("normal", (2, 3, 6, 8))),
    c("adaptive_avg_pool2d(x, (3, 2))", lambda x: F.adaptive_avg_pool2d(x, (3, 2)),
      x=("normal", (2, 3, 6, 8))),
    c("max_pool2d(x, 3, stride=2, ceil_mode=true)",
      lambda x: F.max_pool2d(x, 3, 2, ceil_mode=True), x=IMAGE, f64=True),
    c("max_pool2d(x, 2, stride=2, padding=1, ceil_mode=true)",
      lambda x: F.max_pool2d(x, 2, 2, 1, ceil_mode=True), x=IMAGE),
    c("avg_pool2d(x, 3, stride=2, padding=1, ceil_mode=true)",
      lambda x: F.avg_pool2d(x, 3, 2, 1, ceil_mode=True), x=IMAGE, f64=True),
    c("avg_pool2d(x, 2, ceil_mode=true)", lambda x: F.avg_pool2d(x, 2, ceil_mode=True),
      x=IMAGE),
    c("group_norm(x, 2, w, b)", lambda x, w, b: F.group_norm(x, 2, w, b),
      x=("normal", (2, 4, 3, 5)), w=("normal", (4,)), b=("normal", (4,)), f64=True),
    c("group_norm(x, 3, w, b, eps=0.1)", lambda x, w, b: F.group_norm(x, 3, w, b, 0.1),
      x=("normal", (2, 6, 7)), w=("normal", (6,)), b=("normal", (6,))),
    # einsum (lang/einsum.py): one matmul; topk (lang/topk.py): distinct values, so the
    # indices are torch's too; its i32 indices have no gradient (tests/test_lang_einsum.py)
    c('einsum("bij,bkj->bki", a, b)', lambda a, b: torch.einsum("bij,bkj->bki", a, b),
      a=("normal", (2, 9, 33)), b=("normal", (2, 7, 33)), f64=True),
    c("topk(x, 3)", lambda x: torch.topk(x, 3), x=("grid", (9, 33)), grad=False),
    # dropout everything (train mode): x * 0, NaN for inf as torch
    c("dropout(x, p=1.0)", lambda x: F.dropout(x, 1.0), x=ROW, train=True),
]


def _param(case: Case) -> Any:
    return pytest.param(case, id=case.id)


@pytest.mark.parametrize("case", [_param(k) for k in CASES])
def test_oracle_vs_torch(case: Case) -> None:
    torch_harness.check(torch_harness.case(case.expr, case.torch_fn, train=case.train,
                                           id=case.id, **case.specs()))


def _triton_case(case: Case) -> Any:
    return triton_harness.case(case.expr, id=case.id, f64=case.f64, train=case.train,
                               **case.specs())


@pytest.mark.parametrize("case", [_param(k) for k in CASES])
def test_triton_float32(case: Case) -> None:
    triton_harness.check(_triton_case(case))


@pytest.mark.parametrize("case", [_param(k) for k in CASES if k.f64])
def test_triton_float64(case: Case) -> None:
    triton_harness.check(_triton_case(case), float64=True)


def _float_result(case: Case) -> bool:
    return case.grad and not any(isinstance(kind, int) or kind in ("signed", "divisor")
                                 for kind, _ in case.inputs.values())


@pytest.mark.parametrize("case", [_param(k) for k in CASES if _float_result(k)])
def test_gradient(case: Case) -> None:
    arrays = {k: spec(np.random.default_rng(0)) for k, spec in case.specs().items()}
    src = torch_harness.program(case.expr, arrays)
    kinds = {k: kind for k, (kind, _) in case.inputs.items()}
    grad_harness.check(grad_harness.Case(grad_harness.model(src, train=case.train), kinds))


def test_every_new_builtin_has_a_case() -> None:
    used = {m for k in CASES for m in re.findall(r"\b(\w+)\(", k.expr)}
    mine = {name for name, fn in BUILTINS.items()
            if fn.__module__ in (math_builtins.__name__, layout_builtins.__name__,
                                 nn_builtins.__name__, einsum.__name__, topk.__name__)}
    assert sorted(mine - used) == []
