"""Every builtin of the language, run on the NumPy oracle, against PyTorch.

Each case is one expression (or a whole program) and the same computation written
with torch / torch.nn.functional. The expression is wrapped in

    model M { def forward(a: f32[2, 3], ...) { return <expr> } }

with the input shapes written out, run on the oracle in float64 and compared with
torch in float64 on the same inputs (``rtol = atol = 1e-12``: both sides compute the
same formula in double precision, so only a few ulps of rounding may differ; the
largest difference seen is 2e-14, a batched matmul, and erf needs no wider bound).

Cases marked with an ``f32=`` tolerance also run with float32 inputs and float32
arithmetic (``float64=False``) against the float64 torch result on the same
(float32-rounded) inputs:

* ``F32_ELEMENTWISE`` (rtol 1e-6, atol 1e-6): one elementwise op is correct to a few
  float32 ulps (eps = 1.2e-7); the atol covers results that underflow to 0 in float32
  (sigmoid(-100) = 3.7e-44 in float64) and gelu's cancellation in 1 + erf(x / sqrt 2)
  for negative x (1.3e-6 relative on a result of magnitude ~0.1).
* ``F32_REDUCE`` (rtol 1e-5, atol 1e-5): sums, dot products, normalizations and
  convolutions accumulate O(10-100) roundings of O(1) terms, and cancellation can make
  the relative error of a small result large, hence the absolute floor too (the largest
  error seen is 6e-7, a convolution).

Inputs are seeded normals (positive where the op needs it), with large magnitudes
(|x| ~ 50-200) for the exp/sigmoid/tanh paths, shapes with 1s, odd sizes, scalars and
broadcasting. The result's dtype kind (bool / int / float) and shape must match torch.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from util import compile_src  # tests/util.py

from ember import api
from ember.ir.loc import DSLError
from ember.ir.ops import Op
from ember.ir.shapes import shape_rules
from ember.lang.builtins import BUILTINS
from ember.runtime.oracle import eval_rules
from ember.runtime.rand import dropout_keep, stream_seed

F64 = (1e-12, 1e-12)
F32_ELEMENTWISE = (1e-6, 1e-6)
F32_REDUCE = (1e-5, 1e-5)

# ---- inputs -------------------------------------------------------------------------------

Spec = Callable[[np.random.Generator], np.ndarray]


def normal(*shape: int, scale: float = 1.0) -> Spec:
    return lambda rng: rng.standard_normal(shape) * scale


def positive(*shape: int) -> Spec:
    """In [0.1, ~4): away from 0 for log, sqrt, rsqrt and pow's base."""
    return lambda rng: np.abs(rng.standard_normal(shape)) + 0.1


def rounded(*shape: int) -> Spec:
    """Small integers as floats, so comparisons see many ties."""
    return lambda rng: np.round(rng.standard_normal(shape) * 1.5)


def ints(high: int, *shape: int) -> Spec:
    return lambda rng: np.asarray(rng.integers(0, high, size=shape), dtype=np.int32)


def bools(*shape: int) -> Spec:
    return lambda rng: rng.standard_normal(shape) > 0


def values(*vs: float) -> Spec:
    return lambda rng: np.array(vs, dtype=np.float64)


LARGE = values(-200.0, -100.0, -50.0, -20.0, -1.0, 0.0, 1.0, 20.0, 50.0, 100.0, 200.0)

_ANNOTATION = {np.dtype(np.float64): "f32", np.dtype(np.float32): "f32",
               np.dtype(np.int32): "i32", np.dtype(np.int64): "i64", np.dtype(np.bool_): "bool"}


def program(expr: str, inputs: dict[str, np.ndarray]) -> str:
    """`expr` as the body of a one-function model taking `inputs` (or `expr` itself
    when it already is a program)."""
    if re.match(r"\s*(model|layer)\s", expr):
        return expr
    args = ", ".join(f"{k}: {_ANNOTATION[a.dtype]}[{', '.join(map(str, a.shape))}]"
                     for k, a in inputs.items())
    return f"model M {{\n  def forward({args}) {{ return {expr} }}\n}}"


def to_torch(a: np.ndarray) -> torch.Tensor:
    """A copy in the dtype torch's ops expect: float64, int64 (indices) or bool."""
    if a.dtype.kind == "f":
        return torch.tensor(a, dtype=torch.float64)
    if a.dtype.kind in "iu":
        return torch.tensor(a, dtype=torch.int64)
    return torch.tensor(a)


# ---- cases ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    expr: str
    torch_fn: Callable[..., Any]
    inputs: dict[str, Spec]
    f32: tuple[float, float] | None = None  # (rtol, atol) of the float32 run, if any
    train: bool = False
    id: str = ""

    def param(self) -> Any:
        return pytest.param(self, id=self.id or self.expr)


def case(expr: str, torch_fn: Callable[..., Any], *, f32: tuple[float, float] | None = None,
         train: bool = False, id: str = "", **inputs: Spec) -> Case:
    return Case(expr, torch_fn, inputs, f32=f32, train=train, id=id)


def check(c: Case, float32: bool = False) -> None:
    rng = np.random.default_rng(zlib.crc32((c.id or c.expr).encode()))
    arrays = {k: spec(rng) for k, spec in c.inputs.items()}
    if float32:
        arrays = {k: a.astype(np.float32) if a.dtype.kind == "f" else a
                  for k, a in arrays.items()}
    g = compile_src(program(c.expr, arrays), float64=not float32, train=c.train)
    got = list(api.run(g, arrays, {}).values())
    want = c.torch_fn(*[to_torch(a) for a in arrays.values()])  # in the inputs' order
    want = list(want) if isinstance(want, (tuple, list)) else [want]
    assert len(got) == len(want)
    rtol, atol = c.f32 if float32 else F64
    for g_out, t_out in zip(got, want):
        w = t_out.detach().numpy()
        assert g_out.shape == w.shape, f"shape {g_out.shape}, torch gives {w.shape}"
        assert g_out.dtype.kind == w.dtype.kind, f"dtype {g_out.dtype}, torch gives {w.dtype}"
        if w.dtype.kind == "f":
            assert g_out.dtype == (np.float32 if float32 else np.float64)
            assert not np.isnan(g_out).any() or np.isnan(w).any(), "NaN where torch has none"
            np.testing.assert_allclose(g_out, w, rtol=rtol, atol=atol)
        else:
            np.testing.assert_array_equal(g_out, w)


# ---- elementwise --------------------------------------------------------------------------

BINARY_SHAPES = [((3, 5), (3, 5)), ((4, 1, 5), (3, 1)), ((1,), (2, 7)), ((), (3,))]
BINARY_OPS: list[tuple[str, str, Callable[..., Any]]] = [
    ("+", "add", torch.add), ("-", "sub", torch.sub), ("*", "mul", torch.mul),
    ("/", "div", torch.div), ("**", "pow", torch.pow),
    ("", "maximum", torch.maximum), ("", "minimum", torch.minimum),
]


def _binary_cases() -> list[Case]:
    out = []
    for sym, name, fn in BINARY_OPS:
        for sa, sb in BINARY_SHAPES:
            a = positive(*sa) if name == "pow" else normal(*sa)
            out.append(case(f"{name}(a, b)", fn, a=a, b=normal(*sb), f32=F32_ELEMENTWISE,
                            id=f"{name}(a{list(sa)}, b{list(sb)})"))
            if sym:
                out.append(case(f"a {sym} b", fn, a=a, b=normal(*sb),
                                id=f"a{list(sa)} {sym} b{list(sb)}"))
    return out


UNARY_OPS: list[tuple[str, Callable[..., Any], Callable[..., Spec]]] = [
    ("exp", torch.exp, normal), ("log", torch.log, positive), ("sqrt", torch.sqrt, positive),
    ("rsqrt", torch.rsqrt, positive), ("abs", torch.abs, normal), ("neg", torch.neg, normal),
    ("relu", torch.relu, normal), ("sigmoid", torch.sigmoid, normal),
    ("tanh", torch.tanh, normal), ("gelu", F.gelu, normal), ("erf", torch.erf, normal),
]


def _unary_cases() -> list[Case]:
    out = []
    for name, fn, spec in UNARY_OPS:
        for shape in [(3, 1, 5), (1,), ()]:
            out.append(case(f"{name}(x)", fn, x=spec(*shape), f32=F32_ELEMENTWISE,
                            id=f"{name}(x{list(shape)})"))
        if spec is normal:  # overflow paths: exp(±200), 1 + exp(200), erf(±141), ...
            # float32 exp(x) overflows above ~88 where float64 does not: no f32 run.
            f32 = None if name == "exp" else F32_ELEMENTWISE
            out.append(case(f"{name}(x)", fn, x=LARGE, f32=f32, id=f"{name}(large)"))
    return out


SCALAR_CASES = [
    case("a + 2.5", lambda a: a + 2.5, a=normal(3, 4)),
    case("2.5 - a", lambda a: 2.5 - a, a=normal(3, 4)),
    case("a * 3", lambda a: a * 3, a=normal(3, 4)),
    case("a / 3", lambda a: a / 3, a=normal(3, 4), f32=F32_ELEMENTWISE),
    case("1 / a", lambda a: 1 / a, a=positive(3, 4)),
    case("a ** 2", lambda a: a**2, a=normal(3, 4)),
    case("a ** -0.5", lambda a: a**-0.5, a=positive(3, 4), f32=F32_ELEMENTWISE),
    case("2.0 ** a", lambda a: 2.0**a, a=normal(3, 4)),
    case("-a", lambda a: -a, a=normal(2, 1, 3)),
    case("-a ** 2", lambda a: -(a**2), a=normal(5)),
    case("maximum(a, 0.5)", lambda a: torch.clamp_min(a, 0.5), a=normal(7)),
    case("minimum(a, 0)", lambda a: torch.clamp_max(a, 0.0), a=normal(7)),
    case("i * 2 - j", lambda i, j: i * 2 - j, i=ints(9, 2, 3), j=ints(9, 3)),
    case("abs(-i + j)", lambda i, j: torch.abs(-i + j), i=ints(9, 4, 1), j=ints(9, 5)),
    case("maximum(i, j)", torch.maximum, i=ints(9, 2, 3), j=ints(9, 2, 1), id="maximum i32"),
    case("sum(i, axis=0)", lambda i: i.sum(0), i=ints(9, 4, 3), id="sum i32"),
    case("to_float(i)", lambda i: i.double(), i=ints(9, 2, 3)),
    case("to_float(a > 0)", lambda a: (a > 0).double(), a=normal(4, 3)),
]

COMPARE_OPS = [("<", torch.lt), ("<=", torch.le), (">", torch.gt), (">=", torch.ge),
               ("==", torch.eq), ("!=", torch.ne)]
COMPARE_CASES = [
    *[case(f"a {op} b", fn, a=rounded(4, 1, 5), b=rounded(3, 1), f32=F32_ELEMENTWISE,
           id=f"a[4, 1, 5] {op} b[3, 1]") for op, fn in COMPARE_OPS],
    *[case(f"a {op} 0.0", lambda a, fn=fn: fn(a, 0.0), a=rounded(7)) for op, fn in COMPARE_OPS],
    *[case(f"i {op} j", fn, i=ints(3, 2, 5), j=ints(3, 5), id=f"i32 {op}")
      for op, fn in COMPARE_OPS],
]

LOGICAL_CASES = [
    case("logical_and(p, q)", torch.logical_and, p=bools(3, 1, 4), q=bools(5, 1)),
    case("logical_or(p, q)", torch.logical_or, p=bools(3, 1, 4), q=bools(5, 1)),
    case("logical_not(p)", torch.logical_not, p=bools(2, 3)),
    case("logical_and(a > 0, b < 0.5)", lambda a, b: (a > 0) & (b < 0.5),
         a=normal(3, 4), b=normal(4)),
    case("logical_or(logical_not(a > 0), a > 1)", lambda a: ~(a > 0) | (a > 1), a=normal(9)),
]

WHERE_CASES = [
    case("where(a > 0, a, b)", lambda a, b: torch.where(a > 0, a, b), a=normal(3, 4),
         b=normal(3, 4), f32=F32_ELEMENTWISE),
    case("where(c, a, b)", torch.where, c=bools(3, 1), a=normal(1, 4), b=normal(2, 1, 1)),
    case("where(c, a, 0.0)", lambda c, a: torch.where(c, a, 0.0), c=bools(5), a=normal(2, 5)),
    case("where(c, -1e9, a)", lambda c, a: torch.where(c, -1e9, a), c=bools(4, 4),
         a=normal(4, 4)),
]

# ---- reductions ----------------------------------------------------------------------------

REDUCE_TORCH = {"sum": torch.sum, "mean": torch.mean, "max": torch.amax, "min": torch.amin}


def _reduce_cases() -> list[Case]:
    out = []
    for name, fn in REDUCE_TORCH.items():
        for axis in (None, 0, -1, 1, (0, 2), (-1, 0)):
            for keep in (False, True):
                dim = (0, 1, 2) if axis is None else axis
                kwargs = ("" if axis is None else f", axis={axis}") + (
                    ", keepdims=true" if keep else "")
                out.append(case(f"{name}(x{kwargs})",
                                lambda x, fn=fn, dim=dim, keep=keep: fn(x, dim=dim, keepdim=keep),
                                x=normal(4, 3, 5), f32=F32_REDUCE if axis in (None, -1) else None,
                                id=f"{name}(x[4, 3, 5]{kwargs})"))
        out.append(case(f"{name}(x)", lambda x, fn=fn: fn(x, dim=(0, 1)), x=normal(1, 7),
                        id=f"{name}(x[1, 7])"))
        out.append(case(f"{name}(x, axis=0)", lambda x, fn=fn: fn(x, dim=0), x=normal(1, 7),
                        id=f"{name}(x[1, 7], axis=0)"))
    return out


ARGMAX_CASES = [
    case("argmax(x)", lambda x: torch.argmax(x, dim=-1), x=normal(4, 3, 5)),
    case("argmax(x, axis=0)", lambda x: torch.argmax(x, dim=0), x=normal(4, 3, 5)),
    case("argmax(x, axis=1, keepdims=true)", lambda x: torch.argmax(x, dim=1, keepdim=True),
         x=normal(4, 3, 5)),
    case("argmax(x, axis=-2)", lambda x: torch.argmax(x, dim=-2), x=normal(4, 1, 5)),
    case("argmax(x)", lambda x: torch.argmax(x), x=normal(7), id="argmax(x[7])"),
    case("argmax(x, axis=(1,))", lambda x: torch.argmax(x, dim=1), x=normal(2, 9)),
]

# ---- matmul ------------------------------------------------------------------------------

MATMUL_SHAPES = [((3, 4), (4, 5)), ((1, 4), (4, 1)), ((2, 3, 4), (2, 4, 5)),
                 ((2, 1, 3, 4), (5, 4, 2)), ((3, 4), (2, 4, 5)), ((1, 1, 1), (1, 1, 1))]
MATMUL_CASES = [
    *[case("a @ b", torch.matmul, a=normal(*sa), b=normal(*sb), f32=F32_REDUCE,
           id=f"a{list(sa)} @ b{list(sb)}") for sa, sb in MATMUL_SHAPES],
    case("matmul(a, b)", torch.matmul, a=normal(2, 3, 7), b=normal(7, 3)),
]

# ---- shapes and indexing -----------------------------------------------------------------

MOVEMENT_CASES = [
    case("reshape(x, 5, 6)", lambda x: x.reshape(5, 6), x=normal(2, 3, 5)),
    case("reshape(x, -1)", lambda x: x.reshape(-1), x=normal(2, 3, 5)),
    case("reshape(x, 3, -1)", lambda x: x.reshape(3, -1), x=normal(2, 3, 5)),
    case("reshape(x, (-1, 1, 5))", lambda x: x.reshape(-1, 1, 5), x=normal(2, 3, 5)),
    case("reshape(x, 1)", lambda x: x.reshape(1), x=normal()),
    case("permute(x, 2, 0, 1)", lambda x: x.permute(2, 0, 1), x=normal(2, 3, 5)),
    case("permute(x, -1, 0, 1)", lambda x: x.permute(-1, 0, 1), x=normal(2, 3, 5)),
    case("permute(x, (1, 0))", lambda x: x.permute(1, 0), x=normal(1, 3)),
    case("transpose(x)", lambda x: x.transpose(-2, -1), x=normal(2, 3, 5)),
    case("transpose(x, 0, 2)", lambda x: x.transpose(0, 2), x=normal(2, 3, 5)),
    case("transpose(x, -3, 1)", lambda x: x.transpose(-3, 1), x=normal(2, 3, 5)),
    case("broadcast(x, 4, 3, 5)", lambda x: x.expand(4, 3, 5), x=normal(3, 1)),
    case("broadcast(x, 2, 3)", lambda x: x.expand(2, 3), x=normal(3)),
    case("broadcast(x, (2, 3))", lambda x: x.expand(2, 3), x=normal()),
    case("concat(a, b)", lambda a, b: torch.cat([a, b]), a=normal(2, 3), b=normal(1, 3)),
    case("concat(a, b, c, axis=-1)", lambda a, b, c: torch.cat([a, b, c], -1),
         a=normal(2, 1), b=normal(2, 3), c=normal(2, 5)),
    case("concat(a, b, axis=1)", lambda a, b: torch.cat([a, b], 1),
         a=normal(2, 3, 4), b=normal(2, 1, 4)),
    case("concat(a)", lambda a: torch.cat([a]), a=normal(3)),
    case("split(x, 3, axis=1)", lambda x: torch.chunk(x, 3, dim=1), x=normal(2, 6, 5)),
    case("slice(x, 1, 4, axis=1)", lambda x: x[:, 1:4], x=normal(2, 6, 5)),
    case("slice(x, -3, 7, step=2)", lambda x: x[..., -3:7:2], x=normal(2, 7)),
    case("split(x, 5)", lambda x: torch.chunk(x, 5, dim=-1), x=normal(2, 3, 5)),
    case("split(x, 1, axis=0)", lambda x: torch.chunk(x, 1, dim=0), x=normal(3, 2)),
    case("flatten(x)", lambda x: torch.flatten(x, 1), x=normal(2, 3, 5)),
    case("flatten(x, 0)", lambda x: torch.flatten(x), x=normal(2, 3, 5)),
    case("flatten(x, -2)", lambda x: torch.flatten(x, -2), x=normal(2, 3, 1, 5)),
    case("squeeze(x, 1)", lambda x: x.squeeze(1), x=normal(3, 1, 5)),
    case("squeeze(x, -1)", lambda x: x.squeeze(-1), x=normal(3, 1)),
    case("squeeze(x, 0)", lambda x: x.squeeze(0), x=normal(1)),
    case("unsqueeze(x, 0)", lambda x: x.unsqueeze(0), x=normal(3, 5)),
    case("unsqueeze(x, -1)", lambda x: x.unsqueeze(-1), x=normal(3, 5)),
    case("unsqueeze(x, 1)", lambda x: x.unsqueeze(1), x=normal(3, 5)),
    case("unsqueeze(x, 0)", lambda x: x.unsqueeze(0), x=normal(), id="unsqueeze(scalar, 0)"),
]

INDEX_EXPRS = ["x[1]", "x[-1]", "x[:, 2]", "x[:, -2, 1:5:2]", "x[1:3]", "x[::2]", "x[..., 0]",
               "x[..., ::3]", "x[None]", "x[:, None, 1]", "x[1, ..., None]", "x[-3:, :, 4:]",
               "x[1:100]", "x[-100:2, 0]", "x[0, 0, 0]", "x[:, :, -1]", "x[2:, 1::3, ::4]",
               "x[None, ..., None]", "x[3, 4, 5]", "x[:, 4:1]"]


def _torch_index(expr: str) -> Callable[..., Any]:
    return lambda x: eval(expr, {"x": x})  # the same subscript, in Python


INDEX_CASES = [
    *[case(e, _torch_index(e), x=normal(4, 5, 6)) for e in INDEX_EXPRS],
    case("x[ids]", lambda x, ids: x[ids], x=normal(7, 3), ids=ints(7, 5)),
    case("x[ids]", lambda x, ids: x[ids], x=normal(7, 2, 3), ids=ints(7, 2, 4),
         id="x[7, 2, 3][ids[2, 4]]"),
    case("x[ids][:, 1]", lambda x, ids: x[ids][:, 1], x=normal(5, 3), ids=ints(5, 6)),
]

# ---- creation ------------------------------------------------------------------------------

CREATION_CASES = [
    case("zeros(2, 3)", lambda: torch.zeros(2, 3, dtype=torch.float64)),
    case("ones(1, 4)", lambda: torch.ones(1, 4, dtype=torch.float64)),
    case("ones((3,))", lambda: torch.ones(3, dtype=torch.float64)),
    case("full(2.5, 3, 1, 2)", lambda: torch.full((3, 1, 2), 2.5, dtype=torch.float64)),
    case("full(-1, (2, 3))", lambda: torch.full((2, 3), -1.0, dtype=torch.float64)),
    case("zeros()", lambda: torch.zeros((), dtype=torch.float64)),
    case("arange(7)", lambda: torch.arange(7)),
    case("arange(1)", lambda: torch.arange(1)),
    case("causal_mask(5)", lambda: torch.ones(5, 5, dtype=torch.bool).tril()),
    case("causal_mask(1)", lambda: torch.ones(1, 1, dtype=torch.bool)),
    case("one_hot(y, 5)", lambda y: F.one_hot(y, 5).double(), y=ints(5, 7)),
    case("one_hot(y, 4)", lambda y: F.one_hot(y, 4).double(), y=ints(4, 2, 3)),
    case("one_hot(y, 1)", lambda y: F.one_hot(y, 1).double(), y=ints(1, 3)),
    case("""
model M {
  def forward(x: f32[B, T, 3]) {
    return ones(B, T) + sum(x, axis=-1) + to_float(arange(T)), causal_mask(T), zeros(T, B)
  }
}""", lambda x: (torch.ones(x.shape[:2], dtype=torch.float64) + x.sum(-1) + torch.arange(5),
                 torch.ones(5, 5, dtype=torch.bool).tril(), torch.zeros(5, 2).double()),
         x=normal(2, 5, 3), id="creation with symbolic dims"),
]

# ---- loops (INDEX with a runtime counter) -------------------------------------------------------

LOOP_CASES = [
    case("""
model M {
  def forward(x: f32[4, 5, 3]) {
    let acc = zeros(4, 3)
    for t in range(5) { acc = acc + x[:, t, :] * to_float(t) }
    return acc
  }
}""", lambda x: sum(x[:, t, :] * t for t in range(5)), x=normal(4, 5, 3),
         id="loop x[:, t, :]"),
]

# ---- networks -----------------------------------------------------------------------------


def _softmax_over(fn: Callable[..., Any], x: torch.Tensor, axes: tuple[int, ...]) -> Any:
    """torch's softmax over several trailing axes: flatten them into one."""
    lead = x.shape[: x.ndim - len(axes)]
    return fn(x.reshape(*lead, -1), -1).reshape(x.shape)


SOFTMAX_CASES = [
    *[case(f"{name}(x{kw})", lambda x, fn=fn, ax=ax: fn(x, ax), x=normal(3, 4, 5),
           f32=F32_REDUCE, id=f"{name}(x[3, 4, 5]{kw})")
      for name, fn in [("softmax", torch.softmax), ("log_softmax", torch.log_softmax)]
      for kw, ax in [("", -1), (", axis=0", 0), (", axis=1", 1), (", axis=-2", -2)]],
    case("softmax(x)", lambda x: torch.softmax(x, -1), x=normal(2, 1)),
    case("log_softmax(x)", lambda x: torch.log_softmax(x, -1), x=normal(1)),
    case("softmax(x)", lambda x: torch.softmax(x, -1), x=normal(3, 7, scale=60),
         f32=F32_REDUCE, id="softmax(large)"),
    case("log_softmax(x)", lambda x: torch.log_softmax(x, -1), x=normal(3, 7, scale=60),
         f32=F32_REDUCE, id="log_softmax(large)"),
    case("log_softmax(x, axis=0)", lambda x: torch.log_softmax(x, 0), x=LARGE,
         id="log_softmax(LARGE)"),
    case("softmax(x, axis=(1, 2))", lambda x: _softmax_over(torch.softmax, x, (1, 2)),
         x=normal(3, 4, 5)),
    case("log_softmax(x, axis=(1, 2))", lambda x: _softmax_over(torch.log_softmax, x, (1, 2)),
         x=normal(3, 4, 5)),
    case("softmax(where(causal_mask(5), x, -1e9))",
         lambda x: torch.softmax(x.masked_fill(~torch.ones(5, 5).bool().tril(), -1e9), -1),
         x=normal(2, 5, 5)),
]

NORM_CASES = [
    case("layer_norm(x, w, b)", lambda x, w, b: F.layer_norm(x, (5,), w, b),
         x=normal(2, 3, 5), w=normal(5), b=normal(5), f32=F32_REDUCE),
    case("layer_norm(x, w, b, eps=1e-3)", lambda x, w, b: F.layer_norm(x, (7,), w, b, 1e-3),
         x=normal(1, 1, 7, scale=3), w=normal(7), b=normal(7)),
    case("layer_norm(x, w, b)", lambda x, w, b: F.layer_norm(x, (1,), w, b),
         x=normal(4, 1), w=normal(1), b=normal(1), id="layer_norm(x[4, 1])"),
    case("layer_norm(x, 2.0, 0.5)", lambda x: F.layer_norm(x, (6,)) * 2 + 0.5, x=normal(3, 6)),
    case("batch_norm(x, w, b, m, v)",
         lambda x, w, b, m, v: F.batch_norm(x, m, v, w, b, training=False),
         x=normal(4, 3, 5, 2), w=normal(3), b=normal(3), m=normal(3), v=positive(3),
         f32=F32_REDUCE),
    case("batch_norm(x, w, b, m, v, eps=1e-3)",
         lambda x, w, b, m, v: F.batch_norm(x, m, v, w, b, training=False, eps=1e-3),
         x=normal(5, 3), w=normal(3), b=normal(3), m=normal(3), v=positive(3)),
    case("batch_norm(x, w, b, m, v)",
         lambda x, w, b, m, v: F.batch_norm(x, m, v, w, b, training=True),
         x=normal(4, 3, 5, 2), w=normal(3), b=normal(3), m=normal(3), v=positive(3),
         train=True, f32=F32_REDUCE, id="batch_norm train [4, 3, 5, 2]"),
    case("batch_norm(x, w, b, m, v, eps=1e-3)",
         lambda x, w, b, m, v: F.batch_norm(x, m, v, w, b, training=True, eps=1e-3),
         x=normal(5, 3, scale=4), w=normal(3), b=normal(3), m=normal(3), v=positive(3),
         train=True, id="batch_norm train [5, 3]"),
    case("batch_norm(x, w, b, m, v)",
         lambda x, w, b, m, v: F.batch_norm(x, m, v, w, b, training=True),
         x=normal(1, 2, 3, 3), w=normal(2), b=normal(2), m=normal(2), v=positive(2),
         train=True, id="batch_norm train [1, 2, 3, 3]"),
]

CONV_CASES = [
    case(f"conv2d(x, w{kw})",
         lambda x, w, tkw=tkw: F.conv2d(x, w, **tkw), x=normal(*xs), w=normal(*ws),
         f32=F32_REDUCE, id=f"conv2d(x{list(xs)}, w{list(ws)}{kw})")
    for xs, ws, kw, tkw in [
        ((2, 3, 7, 7), (5, 3, 3, 3), "", {}),
        ((2, 3, 7, 7), (5, 3, 3, 3), ", stride=2, padding=1", dict(stride=2, padding=1)),
        ((1, 3, 8, 5), (5, 3, 3, 2), ", stride=(2, 1), padding=(1, 2)",
         dict(stride=(2, 1), padding=(1, 2))),
        ((1, 5, 9, 7), (3, 5, 3, 3), ", padding=2, dilation=2", dict(padding=2, dilation=2)),
        ((1, 3, 9, 8), (2, 3, 2, 3), ", dilation=(2, 1), stride=(1, 2)",
         dict(dilation=(2, 1), stride=(1, 2))),
        ((2, 3, 6, 5), (6, 1, 3, 3), ", padding=1, groups=3", dict(padding=1, groups=3)),
        ((1, 4, 5, 5), (6, 2, 3, 1), ", groups=2", dict(groups=2)),
        ((2, 3, 4, 5), (5, 3, 1, 1), "", {}),
        ((1, 1, 7, 7), (1, 1, 2, 2), ", stride=3", dict(stride=3)),
        ((1, 1, 1, 1), (1, 1, 1, 1), "", {}),
        ((3, 2, 3, 3), (4, 2, 3, 3), ", padding=(0, 1)", dict(padding=(0, 1))),
    ]
]

POOL_CONFIGS = [
    ((2, 3, 6, 6), "2", {"kernel_size": 2}),
    ((2, 3, 7, 5), "3, stride=2, padding=1", {"kernel_size": 3, "stride": 2, "padding": 1}),
    ((1, 2, 7, 6), "(3, 2), stride=(1, 2), padding=(1, 0)",
     {"kernel_size": (3, 2), "stride": (1, 2), "padding": (1, 0)}),
    ((1, 1, 5, 5), "3, stride=1", {"kernel_size": 3, "stride": 1}),
    ((1, 5, 5, 9), "2, stride=3", {"kernel_size": 2, "stride": 3}),
    ((2, 1, 4, 4), "4, padding=2", {"kernel_size": 4, "padding": 2}),
    ((1, 1, 1, 1), "1", {"kernel_size": 1}),
]
POOL_CASES = [
    case(f"{name}(x, {args})", lambda x, fn=fn, tkw=tkw: fn(x, **tkw), x=spec(*xs),
         f32=F32_REDUCE, id=f"{name}(x{list(xs)}, {args}){tag}")
    for name, fn in [("max_pool2d", F.max_pool2d), ("avg_pool2d", F.avg_pool2d)]
    for xs, args, tkw in POOL_CONFIGS
    # all-negative inputs: padding must count as -inf for max, as 0 for avg (torch's
    # count_include_pad=True)
    for spec, tag in [(normal, ""), (lambda *s: lambda rng: -positive(*s)(rng), " negative")]
]

LOSS_CASES = [
    case("embedding(t, ids)", lambda t, ids: F.embedding(ids, t), t=normal(7, 4),
         ids=ints(7, 2, 3), f32=F32_ELEMENTWISE, id="embedding"),
    case("embedding(t, ids)", lambda t, ids: F.embedding(ids, t), t=normal(1, 3),
         ids=ints(1, 5), id="embedding(t[1, 3])"),
    case("cross_entropy(z, y)", F.cross_entropy, z=normal(5, 7), y=ints(7, 5), f32=F32_REDUCE),
    case("cross_entropy(z, y)", lambda z, y: F.cross_entropy(z.permute(0, 2, 1), y),
         z=normal(2, 3, 7), y=ints(7, 2, 3), f32=F32_REDUCE, id="cross_entropy 3-D"),
    case("cross_entropy(z, y)", F.cross_entropy, z=normal(4, 9, scale=60), y=ints(9, 4),
         f32=F32_REDUCE, id="cross_entropy(large)"),
    case("cross_entropy(z, y)", F.cross_entropy, z=normal(1, 1), y=ints(1, 1),
         id="cross_entropy(z[1, 1])"),
    case("cross_entropy(z, y)", F.cross_entropy, z=normal(6), y=ints(6),
         id="cross_entropy unbatched"),
    case("mse(a, b)", F.mse_loss, a=normal(3, 5), b=normal(3, 5), f32=F32_REDUCE),
    case("mse(a, b)", F.mse_loss, a=normal(4, 1), b=normal(4, 1), id="mse [4, 1]"),
    case("mse(a, b)", F.mse_loss, a=normal(), b=normal(), id="mse scalar"),
    case("dropout(x, p=0.3)", lambda x: F.dropout(x, 0.3, training=False), x=normal(3, 5),
         f32=F32_ELEMENTWISE, id="dropout eval"),
    case("dropout(x, p=0.0)", lambda x: F.dropout(x, 0.0, training=True), x=normal(3, 5),
         train=True, id="dropout train p=0"),
]

CASES = [
    *_binary_cases(), *_unary_cases(), *SCALAR_CASES, *COMPARE_CASES, *LOGICAL_CASES,
    *WHERE_CASES, *_reduce_cases(), *ARGMAX_CASES, *MATMUL_CASES, *MOVEMENT_CASES,
    *INDEX_CASES, *CREATION_CASES, *LOOP_CASES, *SOFTMAX_CASES, *NORM_CASES, *CONV_CASES,
    *POOL_CASES, *LOSS_CASES,
]


@pytest.mark.parametrize("c", [c.param() for c in CASES])
def test_f64_matches_torch(c: Case) -> None:
    check(c)


@pytest.mark.parametrize("c", [c.param() for c in CASES if c.f32])
def test_f32_matches_torch_f64(c: Case) -> None:
    check(c, float32=True)


def test_every_builtin_has_a_case() -> None:
    from test_lang_ops import CASES as LANG_CASES  # the composites of lang/*_builtins.py
    used = {m for c in [*CASES, *LANG_CASES] for m in re.findall(r"\b(\w+)\(", c.expr)}
    missing = sorted(set(BUILTINS) - used)
    assert not missing, f"builtins without a torch case: {missing}"


def test_every_op_has_a_shape_and_an_eval_rule() -> None:
    missing = {"shape_rules": [op for op in Op if op not in shape_rules],
               "eval_rules": [op for op in Op if op not in eval_rules]}
    assert missing == {"shape_rules": [], "eval_rules": []}


# ---- dropout in train mode ------------------------------------------------------------------


def _run_train(expr: str, x: np.ndarray, seed: int) -> tuple[list[np.ndarray], list[str]]:
    """Outputs of `expr` in train mode, and the random stream of each dropout site."""
    g = compile_src(program(expr, {"x": x}), float64=x.dtype == np.float64, train=True)
    streams = [n.attrs["stream"] for n in g.nodes if n.op is Op.RAND]
    return list(api.run(g, {"x": x}, {}, seed).values()), streams


@pytest.mark.parametrize("p", [0.1, 0.5, 0.75])
@pytest.mark.parametrize("seed", [0, 7])
def test_dropout_train(p: float, seed: int) -> None:
    x = np.random.default_rng(seed).standard_normal((61, 83))
    (out,), (stream,) = _run_train(f"dropout(x, p={p})", x, seed)
    # Expected, from the documented rule: element i (row-major) of the site's stream is
    # kept iff uniform(stream_seed(seed, stream), i) >= p; kept ones scale by 1/(1-p).
    keep = dropout_keep(stream_seed(seed, stream), x.shape, p)
    np.testing.assert_allclose(out, np.where(keep, x / (1 - p), 0.0), rtol=1e-12, atol=0)
    assert np.array_equal(out != 0, keep)
    # The kept fraction is 1-p within 5 binomial standard deviations, for ember and torch.
    sigma = np.sqrt(p * (1 - p) / x.size)
    assert abs(keep.mean() - (1 - p)) < 5 * sigma
    torch.manual_seed(seed)
    t = F.dropout(torch.tensor(x), p, training=True).numpy()
    kept_t = t != 0
    assert abs(kept_t.mean() - (1 - p)) < 5 * sigma
    # torch's convention (inverted dropout: kept values are x / (1-p), dropped are 0)
    # applied to ember's mask reproduces ember's output.
    np.testing.assert_allclose(t[kept_t], x[kept_t] / (1 - p), rtol=1e-12)
    as_torch = torch.where(torch.tensor(keep), torch.tensor(x) / (1 - p), 0.0).numpy()
    np.testing.assert_allclose(out, as_torch, rtol=1e-12, atol=0)


def test_dropout_train_float32() -> None:
    x = np.random.default_rng(3).standard_normal((7, 9)).astype(np.float32)
    (out,), (stream,) = _run_train("dropout(x, p=0.25)", x, seed=11)
    assert out.dtype == np.float32
    keep = dropout_keep(stream_seed(11, stream), x.shape, 0.25)
    np.testing.assert_allclose(out, np.where(keep, x / 0.75, 0.0), rtol=1e-6, atol=0)


def test_dropout_sites_and_seeds_draw_different_masks() -> None:
    x = np.ones((40, 50))
    (a, b), streams = _run_train("dropout(x, p=0.5), dropout(x, p=0.5)", x, seed=0)
    assert len(set(streams)) == 2
    assert not np.array_equal(a != 0, b != 0)
    for out, stream in zip((a, b), streams):
        assert np.array_equal(out != 0, dropout_keep(stream_seed(0, stream), x.shape, 0.5))
    (c,), _ = _run_train("dropout(x, p=0.5)", x, seed=1)
    (d,), _ = _run_train("dropout(x, p=0.5)", x, seed=0)
    assert not np.array_equal(c != 0, d != 0)


def test_dropout_in_a_loop_draws_a_fresh_mask_per_step() -> None:
    src = """
model M {
  def forward(x: f32[16, 16]) {
    let acc = zeros(16, 16)
    for t in range(2) { acc = acc + dropout(x, p=0.5) * to_float(t + 1) }
    return acc
  }
}"""
    (out,) = api.run(compile_src(src, train=True), {"x": np.ones((16, 16))}, {}).values()
    # Kept at step 0 only: 2, at step 1 only: 4 (each kept value is 1 / (1 - 0.5) = 2).
    assert np.isin(out, (2.0, 4.0)).any(), "every element was kept at both steps or neither"


# ---- inputs torch rejects are rejected at compile time ---------------------------------------


@pytest.mark.parametrize("expr", [
    "sum(x > 0)",            # torch counts; ember would have computed any()
    "-(x > 0)",              # torch: negation of a bool tensor is not supported
    "abs(x > 0)",            # torch: abs is not implemented for bool
    "permute(x, 3, 0)",      # torch: dimension out of range
    "sum(x, axis=(0, -2))",  # torch: dim 0 appears multiple times
    "transpose(x, 0, 2)",    # torch: dimension out of range
])
def test_rejected_like_torch(expr: str) -> None:
    with pytest.raises(DSLError):
        compile_src(program(expr, {"x": np.zeros((2, 3))}))
