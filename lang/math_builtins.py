"""Activations, statistics and integer arithmetic written from primitives.

Each builtin here is a composite: it only emits primitive ops, so the oracle,
the gradient and the Triton lowering need no new rules. Formulas are chosen to
match torch's values and its derivatives at the branch points (`where` on
`x > 0`, not `maximum`, whose derivative halves at ties).
"""

from __future__ import annotations

from typing import Any

from ember.ir import dims
from ember.ir.dtypes import DType
from ember.ir.loc import DSLError, Loc
from ember.ir.ops import Op

from .builtins import _axes, _count, _fconst, _t, builtin
from .exprs import as_tensor
from .values import Tensor, describe


def _number(v: Any, what: str, loc: Loc) -> float:
    if not isinstance(v, (int, float)) or isinstance(v, bool):
        raise DSLError(f"{what} must be a number, found {describe(v)}", loc)
    return float(v)


def _float(em: Any, x: Any, name: str, loc: Loc) -> Tensor:
    x = _t(em, x, loc)
    if not em.type(x).dtype.is_float:
        raise DSLError(f"{name} expects a float tensor, found {em.type(x)}", loc)
    return x


# ---- activations ---------------------------------------------------------------------

@builtin
def silu(em: Any, loc: Loc, x: Any) -> Tensor:
    """x * sigmoid(x), torch's silu (swish)."""
    x = _float(em, x, "silu", loc)
    return em.add(Op.MUL, (x, em.add(Op.SIGMOID, (x,), {}, loc)), {}, loc)


@builtin
def leaky_relu(em: Any, loc: Loc, x: Any, negative_slope: float = 0.01) -> Tensor:
    x = _float(em, x, "leaky_relu", loc)
    slope = _fconst(em, x, _number(negative_slope, "negative_slope", loc), loc)
    return _where_positive(em, x, x, em.add(Op.MUL, (x, slope), {}, loc), loc)


@builtin
def elu(em: Any, loc: Loc, x: Any, alpha: float = 1.0) -> Tensor:
    """x for x > 0, alpha (e^x - 1) otherwise. exp sees min(x, 0) (through `where`,
    so its derivative at 0 is alpha, as torch's): e^x of a large x would be inf,
    and inf times the zero cotangent of the unused branch is NaN."""
    x = _float(em, x, "elu", loc)
    zero = _fconst(em, x, 0.0, loc)
    e = em.add(Op.EXP, (_where_positive(em, x, zero, x, loc),), {}, loc)
    em1 = em.add(Op.SUB, (e, _fconst(em, x, 1.0, loc)), {}, loc)
    neg = em.add(Op.MUL, (em1, _fconst(em, x, _number(alpha, "alpha", loc), loc)), {}, loc)
    return _where_positive(em, x, x, neg, loc)


@builtin
def softplus(em: Any, loc: Loc, x: Any, beta: float = 1.0, threshold: float = 20.0) -> Tensor:
    """log(1 + e^(beta x)) / beta, as relu(z) + log1p(e^-|z|) with z = beta x (no
    overflow); x itself where beta x > threshold, as torch."""
    x = _float(em, x, "softplus", loc)
    b = _number(beta, "beta", loc)
    z = em.add(Op.MUL, (x, _fconst(em, x, b, loc)), {}, loc)
    tail = _log1p(em, em.add(Op.EXP, (em.add(Op.NEG, (em.add(Op.ABS, (z,), {}, loc),), {}, loc),),
                             {}, loc), loc)
    soft = em.add(Op.ADD, (em.add(Op.RELU, (z,), {}, loc), tail), {}, loc)
    soft = em.add(Op.DIV, (soft, _fconst(em, x, b, loc)), {}, loc)
    over = em.add(Op.GT, (z, _fconst(em, x, _number(threshold, "threshold", loc), loc)), {}, loc)
    return em.add(Op.WHERE, (over, x, soft), {}, loc)


def _log1p(em: Any, e: Tensor, loc: Loc) -> Tensor:
    """log(1 + e) for e >= 0, accurate for tiny e: with u = 1 + e rounded,
    log(u) * e / (u - 1) cancels the rounding of u (Goldberg's trick); e itself
    where u rounds to 1."""
    one = _fconst(em, e, 1.0, loc)
    u = em.add(Op.ADD, (e, one), {}, loc)
    um1 = em.add(Op.SUB, (u, one), {}, loc)
    exact = em.add(Op.EQ, (um1, _fconst(em, e, 0.0, loc)), {}, loc)
    safe = em.add(Op.WHERE, (exact, one, um1), {}, loc)  # no 0/0 in the unused branch
    ratio = em.add(Op.DIV, (em.add(Op.MUL, (em.add(Op.LOG, (u,), {}, loc), e), {}, loc), safe),
                   {}, loc)
    return em.add(Op.WHERE, (exact, e, ratio), {}, loc)


def _where_positive(em: Any, x: Tensor, a: Tensor, b: Tensor, loc: Loc) -> Tensor:
    """a where x > 0, else b."""
    pos = em.add(Op.GT, (x, _fconst(em, x, 0.0, loc)), {}, loc)
    return em.add(Op.WHERE, (pos, a, b), {}, loc)


@builtin
def clamp(em: Any, loc: Loc, x: Any, min: Any = None, max: Any = None) -> Tensor:
    """x limited to [min, max] (numbers or tensors; either may be omitted), as
    torch.clamp: the derivative is 1 inside the closed interval, NaN stays NaN."""
    x = _t(em, x, loc)
    if min is None and max is None:
        raise DSLError("clamp needs min=, max= or both", loc)
    for bound, op in ((min, Op.LT), (max, Op.GT)):
        if bound is not None:
            limit = as_tensor(em, bound, x, loc)
            outside = em.add(op, (x, limit), {}, loc)
            x = em.add(Op.WHERE, (outside, limit, x), {}, loc)
    return x


# ---- statistics ------------------------------------------------------------------------

@builtin
def var(em: Any, loc: Loc, x: Any, axis: Any = None, keepdims: bool = False,
        correction: int = 1) -> Tensor:
    """sum((x - mean)^2) / (n - correction) over `axis`, torch.var's default
    (correction=1, Bessel's); n - correction <= 0 divides by 0, as torch."""
    x = _float(em, x, "var", loc)
    axes = _axes(em, x, axis, loc)
    if not isinstance(correction, int) or isinstance(correction, bool) or correction < 0:
        raise DSLError(f"correction must be a non-negative int, found {describe(correction)}",
                       loc)
    mean = em.add(Op.MEAN, (x,), {"axes": axes, "keepdims": True}, loc)
    d = em.add(Op.SUB, (x, mean), {}, loc)
    total = em.add(Op.SUM, (em.add(Op.MUL, (d, d), {}, loc),),
                   {"axes": axes, "keepdims": bool(keepdims)}, loc)
    n = _count(em, dims.prod(tuple(em.type(x).shape[a] for a in axes)), x, loc)
    n = em.add(Op.SUB, (n, _fconst(em, x, float(correction), loc)), {}, loc)
    n = em.add(Op.MAXIMUM, (n, _fconst(em, x, 0.0, loc)), {}, loc)
    return em.add(Op.DIV, (total, n), {}, loc)


@builtin
def std(em: Any, loc: Loc, x: Any, axis: Any = None, keepdims: bool = False,
        correction: int = 1) -> Tensor:
    """sqrt(var(x, axis, keepdims, correction))."""
    return em.add(Op.SQRT, (var(em, loc, x, axis, keepdims, correction),), {}, loc)


@builtin
def cumsum(em: Any, loc: Loc, x: Any, axis: int = -1) -> Tensor:
    """Inclusive prefix sums along `axis`, as a matmul with the upper-triangular
    ones matrix U[j, i] = (j <= i): one dense kernel and a free gradient (a
    matmul with U^T), at O(n^2) work for an axis of length n. A non-finite
    element makes every sum along its row NaN (0 * inf), where torch gives inf
    or NaN only from that element on."""
    x = _float(em, x, "cumsum", loc)
    rank = em.type(x).rank
    if rank == 0:
        raise DSLError("cumsum needs a tensor of rank >= 1", loc)
    (ax,) = _axes(em, x, axis, loc)
    perm = tuple(a for a in range(rank) if a != ax) + (ax,)
    moved = em.add(Op.PERMUTE, (x,), {"perm": perm}, loc) if ax != rank - 1 else x
    if rank == 1:
        moved = em.add(Op.RESHAPE, (moved,), {"shape": (1,) + em.type(x).shape}, loc)
    n = em.type(x).shape[ax]
    rows = em.add(Op.IOTA, (), {"shape": (n, n), "axis": 0, "dtype": DType.I32}, loc)
    cols = em.add(Op.IOTA, (), {"shape": (n, n), "axis": 1, "dtype": DType.I32}, loc)
    upper = em.add(Op.CAST, (em.add(Op.LE, (rows, cols), {}, loc),),
                   {"dtype": em.type(x).dtype}, loc)
    out = em.add(Op.MATMUL, (moved, upper), {}, loc)
    if rank == 1:
        return em.add(Op.RESHAPE, (out,), {"shape": em.type(x).shape}, loc)
    inverse = tuple(perm.index(a) for a in range(rank))
    return em.add(Op.PERMUTE, (out,), {"perm": inverse}, loc) if ax != rank - 1 else out


# ---- integer division ------------------------------------------------------------------

@builtin
def floor_divide(em: Any, loc: Loc, a: Any, b: Any) -> Tensor:
    """a // b on i32 tensors, rounding toward -inf (Python's and torch's `//`)."""
    return _divmod(em, a, b, loc)[0]


@builtin
def remainder(em: Any, loc: Loc, a: Any, b: Any) -> Tensor:
    """a % b on i32 tensors, with the sign of b (Python's and torch's `%`)."""
    return _divmod(em, a, b, loc)[1]


def _divmod(em: Any, a: Any, b: Any, loc: Loc) -> tuple[Tensor, Tensor]:
    """(a // b, a % b) for i32. The truncated quotient is the float64 quotient
    cast to i32 (exact: two i32 operands' quotient never rounds across an
    integer), then corrected by one where the remainder's sign differs from
    b's. b == 0 gives an unspecified value (torch raises)."""
    ta, tb = as_tensor(em, a, b, loc), as_tensor(em, b, a, loc)
    for t in (ta, tb):
        if em.type(t).dtype is not DType.I32:
            raise DSLError(f"'//' and '%' on tensors need i32 operands, found {em.type(t)}",
                           loc)
    wide = [em.add(Op.CAST, (t,), {"dtype": DType.F64}, loc) for t in (ta, tb)]
    q = em.add(Op.CAST, (em.add(Op.DIV, tuple(wide), {}, loc),), {"dtype": DType.I32}, loc)
    r = em.add(Op.SUB, (ta, em.add(Op.MUL, (q, tb), {}, loc)), {}, loc)
    zero = em.const(0, DType.I32, loc)
    signs_differ = em.add(Op.NE, (em.add(Op.LT, (r, zero), {}, loc),
                                  em.add(Op.LT, (tb, zero), {}, loc)), {}, loc)
    fix = em.add(Op.AND, (em.add(Op.NE, (r, zero), {}, loc), signs_differ), {}, loc)
    one = em.const(1, DType.I32, loc)
    q = em.add(Op.WHERE, (fix, em.add(Op.SUB, (q, one), {}, loc), q), {}, loc)
    r = em.add(Op.WHERE, (fix, em.add(Op.ADD, (r, tb), {}, loc), r), {}, loc)
    return q, r
