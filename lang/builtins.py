"""The builtin functions of the language.

Primitives map to one IR op; composites (softmax, layer_norm, cross_entropy,
dropout, ...) are written here from primitives, so later passes (autodiff,
fusion) only need rules for primitives. docs/language.md lists which is which.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from typing import Any

from ember.ir import dims
from ember.ir.dims import Dim
from ember.ir.dtypes import DType
from ember.ir.graph import ShapeError
from ember.ir.loc import DSLError, Loc
from ember.ir.ops import Op
from ember.ir.shapes import normalize_axes

from .exprs import as_tensor, binary
from .values import RUNTIME_DIM_NOTE, DimExpr, Tensor, as_dim, describe

BUILTINS: dict[str, Callable[..., Any]] = {}


def builtin(fn: Callable[..., Any]) -> Callable[..., Any]:
    BUILTINS[fn.__name__.rstrip("_")] = fn
    return fn


def call_builtin(em: Any, name: str, args: list[Any], kwargs: dict[str, Any], loc: Loc) -> Any:
    fn = BUILTINS[name]
    try:
        inspect.signature(fn).bind(em, loc, *args, **kwargs)
    except TypeError as e:
        raise DSLError(f"bad arguments to {name}{signature(name)}: {e}", loc) from None
    try:
        return fn(em, loc, *args, **kwargs)
    except ShapeError as e:
        raise DSLError(f"{name}: {e}", loc) from None


def signature(name: str) -> str:
    """A builtin's user-facing signature, e.g. `(x, axis=-1)`."""
    params = list(inspect.signature(BUILTINS[name]).parameters.values())[2:]
    bare = [p.replace(annotation=inspect.Parameter.empty) for p in params]
    return "(" + ", ".join(str(p) for p in bare) + ")"


# ---- argument helpers -------------------------------------------------------

def _t(em: Any, v: Any, loc: Loc, like: Any = None) -> Tensor:
    return as_tensor(em, v, like, loc)


def _int(v: Any, what: str, loc: Loc) -> int:
    if not isinstance(v, int) or isinstance(v, bool):
        raise DSLError(f"{what} must be an int, found {describe(v)}", loc)
    return v


def _pair(v: Any, what: str, loc: Loc, least: int = 1) -> tuple[int, int]:
    """An int or a pair of ints, each at least `least` (1 for sizes, strides
    and dilations; 0 for padding)."""
    pair = (v[0], v[1]) if isinstance(v, tuple) and len(v) == 2 else (v, v)
    out = tuple(_int(p, what, loc) for p in pair)
    if min(out) < least:
        raise DSLError(f"{what} must be at least {least}, found {v}", loc)
    return out  # type: ignore[return-value]


def _axes(em: Any, x: Tensor, axis: Any, loc: Loc) -> tuple[int, ...]:
    rank = em.type(x).rank
    if axis is None:
        return tuple(range(rank))
    raw = axis if isinstance(axis, tuple) else (axis,)
    axes = normalize_axes(tuple(_int(a, "axis", loc) for a in raw), rank)
    if len(axes) != len(raw):  # normalize_axes merges repeats; torch rejects them
        raise DSLError(f"axis {axis} names an axis more than once", loc)
    return axes


def _shape_args(shape: tuple[Any, ...], loc: Loc, allow: int = 0) -> tuple[Dim, ...]:
    """Dims from builtin arguments; ints must be >= `allow` (-1 for reshape)."""
    if len(shape) == 1 and isinstance(shape[0], tuple):
        shape = shape[0]
    out = []
    for d in shape:
        v = as_dim(d)
        if v is None or (isinstance(v, int) and v < allow):
            note = RUNTIME_DIM_NOTE if isinstance(d, DimExpr) else ""
            raise DSLError(f"shape entries must be non-negative ints or dimensions, found "
                           f"{describe(d)}", loc, note)
        out.append(v)
    return tuple(out)


def _fconst(em: Any, x: Tensor, value: float, loc: Loc) -> Tensor:
    return em.const(value, em.type(x).dtype, loc)


# ---- elementwise -------------------------------------------------------------

def _unary_builtin(name: str, op: Op) -> None:
    def fn(em: Any, loc: Loc, x: Any) -> Tensor:
        return em.add(op, (_t(em, x, loc),), {}, loc)
    fn.__name__ = name
    builtin(fn)


for _name, _op in [("exp", Op.EXP), ("log", Op.LOG), ("sqrt", Op.SQRT), ("rsqrt", Op.RSQRT),
                   ("abs", Op.ABS), ("relu", Op.RELU), ("sigmoid", Op.SIGMOID),
                   ("tanh", Op.TANH), ("erf", Op.ERF), ("neg", Op.NEG),
                   ("logical_not", Op.NOT)]:
    _unary_builtin(_name, _op)


def _binary_builtin(name: str, op: Op) -> None:
    def fn(em: Any, loc: Loc, a: Any, b: Any) -> Tensor:
        ta, tb = _t(em, a, loc, b), _t(em, b, loc, a)
        return em.add(op, (ta, tb), {}, loc)
    fn.__name__ = name
    builtin(fn)


for _name, _op in [("add", Op.ADD), ("sub", Op.SUB), ("mul", Op.MUL), ("div", Op.DIV),
                   ("pow", Op.POW), ("maximum", Op.MAXIMUM), ("minimum", Op.MINIMUM),
                   ("matmul", Op.MATMUL), ("logical_and", Op.AND), ("logical_or", Op.OR)]:
    _binary_builtin(_name, _op)


@builtin
def where(em: Any, loc: Loc, cond: Any, a: Any, b: Any) -> Tensor:
    c = _t(em, cond, loc)
    ta = _t(em, a, loc, b if isinstance(b, Tensor) else None)
    return em.add(Op.WHERE, (c, ta, _t(em, b, loc, ta)), {}, loc)


@builtin
def gelu(em: Any, loc: Loc, x: Any) -> Tensor:
    """Exact GELU, x * Phi(x) = 0.5 x (1 + erf(x / sqrt 2)), as torch's default."""
    x = _t(em, x, loc)
    inner = em.add(Op.ERF, (em.add(Op.MUL, (x, _fconst(em, x, 1 / math.sqrt(2), loc)), {}, loc),),
                   {}, loc)
    one_plus = em.add(Op.ADD, (inner, _fconst(em, x, 1.0, loc)), {}, loc)
    half_x = em.add(Op.MUL, (x, _fconst(em, x, 0.5, loc)), {}, loc)
    return em.add(Op.MUL, (half_x, one_plus), {}, loc)


@builtin
def to_float(em: Any, loc: Loc, x: Any) -> Tensor:
    return em.add(Op.CAST, (_t(em, x, loc),), {"dtype": em.float_dtype}, loc)


# ---- reductions -----------------------------------------------------------------

def _reduce_builtin(name: str, op: Op) -> None:
    def fn(em: Any, loc: Loc, x: Any, axis: Any = None, keepdims: bool = False) -> Tensor:
        x = _t(em, x, loc)
        return em.add(op, (x,), {"axes": _axes(em, x, axis, loc), "keepdims": bool(keepdims)},
                      loc)
    fn.__name__ = name
    builtin(fn)


for _name, _op in [("sum", Op.SUM), ("mean", Op.MEAN), ("max", Op.MAX), ("min", Op.MIN)]:
    _reduce_builtin(_name, _op)


@builtin
def argmax(em: Any, loc: Loc, x: Any, axis: int = -1, keepdims: bool = False) -> Tensor:
    x = _t(em, x, loc)
    return em.add(Op.ARGMAX, (x,), {"axes": _axes(em, x, axis, loc),
                                    "keepdims": bool(keepdims)}, loc)


def _reduce(em: Any, op: Op, x: Tensor, axes: tuple[int, ...], loc: Loc) -> Tensor:
    return em.add(op, (x,), {"axes": axes, "keepdims": True}, loc)


# ---- shapes -----------------------------------------------------------------------

@builtin
def reshape(em: Any, loc: Loc, x: Any, *shape: Any) -> Tensor:
    x = _t(em, x, loc)
    target = _resolve_minus_one(em.type(x).shape, _shape_args(shape, loc, allow=-1), loc)
    return em.add(Op.RESHAPE, (x,), {"shape": target}, loc)


def _resolve_minus_one(src: tuple[Dim, ...], target: tuple[Dim, ...], loc: Loc) -> tuple[Dim, ...]:
    if target.count(-1) > 1:
        raise DSLError("reshape accepts at most one -1", loc)
    if -1 not in target:
        return target
    known = dims.prod(tuple(d for d in target if d != -1))
    rest = dims.div(dims.prod(src), known)
    if rest is None:
        raise DSLError(f"cannot infer -1 in reshape of {dims.fmt(src)} to {dims.fmt(target)}",
                       loc)
    return tuple(rest if d == -1 else d for d in target)


@builtin
def permute(em: Any, loc: Loc, x: Any, *perm: Any) -> Tensor:
    x = _t(em, x, loc)
    rank = em.type(x).rank
    if len(perm) == 1 and isinstance(perm[0], tuple):  # permute(x, (2, 0, 1)), as torch
        perm = perm[0]
    # Each axis is range-checked (a bare `% rank` would wrap an out-of-range axis into
    # a valid permutation); normalize_axes of a single axis cannot merge repeats, which
    # the PERMUTE shape rule rejects.
    p = tuple(normalize_axes((_int(a, "axis", loc),), rank)[0] for a in perm)
    return em.add(Op.PERMUTE, (x,), {"perm": p}, loc)


@builtin
def transpose(em: Any, loc: Loc, x: Any, a: int = -2, b: int = -1) -> Tensor:
    x = _t(em, x, loc)
    rank = em.type(x).rank
    i, j = (normalize_axes((_int(v, "axis", loc),), rank)[0] for v in (a, b))
    perm = list(range(rank))
    perm[i], perm[j] = perm[j], perm[i]
    return em.add(Op.PERMUTE, (x,), {"perm": tuple(perm)}, loc)


@builtin
def broadcast(em: Any, loc: Loc, x: Any, *shape: Any) -> Tensor:
    return em.add(Op.EXPAND, (_t(em, x, loc),), {"shape": _shape_args(shape, loc)}, loc)


def tensors(em: Any, xs: tuple[Any, ...], name: str, loc: Loc) -> tuple[Tensor, ...]:
    """The tensors of `f(a, b)` or of `f((a, b))` (a tuple, e.g. from split)."""
    if len(xs) == 1 and isinstance(xs[0], tuple):
        xs = xs[0]
    if not xs:
        raise DSLError(f"{name} needs at least one tensor", loc)
    return tuple(_t(em, x, loc) for x in xs)


@builtin
def concat(em: Any, loc: Loc, *xs: Any, axis: int = 0) -> Tensor:
    ts = tensors(em, xs, "concat", loc)
    ax = normalize_axes((_int(axis, "axis", loc),), em.type(ts[0]).rank)[0]
    return em.add(Op.CONCAT, ts, {"axis": ax}, loc)


@builtin
def split(em: Any, loc: Loc, x: Any, parts: Any, axis: int = -1) -> tuple[Tensor, ...]:
    """`parts` equal chunks (an int), or chunks of the given sizes (a tuple)."""
    x = _t(em, x, loc)
    ax = _axes(em, x, axis, loc)[0]
    size = em.type(x).shape[ax]
    sizes = _split_sizes(size, parts, ax, loc)
    starts = [sum(sizes[:k]) for k in range(len(sizes))]
    return tuple(_slice_axis(em, x, ax, s, s + n, loc) for s, n in zip(starts, sizes))


def _split_sizes(size: Dim, parts: Any, ax: int, loc: Loc) -> tuple[int, ...]:
    if isinstance(parts, tuple):
        sizes = tuple(_int(p, "a split size", loc) for p in parts)
        if min(sizes, default=-1) < 0 or sum(sizes) != size:
            raise DSLError(f"split: sizes {parts} must be non-negative and add up to the size "
                           f"{size} of axis {ax}", loc)
        return sizes
    if not isinstance(size, int) or _int(parts, "parts", loc) < 1 or size % parts:
        raise DSLError(f"split: axis {ax} of size {size} is not divisible into {parts} parts",
                       loc)
    return (size // parts,) * parts


def _slice_axis(em: Any, x: Tensor, axis: int, start: int, stop: int, loc: Loc,
                step: int = 1) -> Tensor:
    shape = em.type(x).shape
    starts = tuple(start if i == axis else 0 for i in range(len(shape)))
    stops = tuple(stop if i == axis else d for i, d in enumerate(shape))
    steps = tuple(step if i == axis else 1 for i in range(len(shape)))
    return em.add(Op.SLICE, (x,), {"starts": starts, "stops": stops, "steps": steps}, loc)


@builtin
def slice_(em: Any, loc: Loc, x: Any, start: int, stop: int, step: int = 1,
           axis: int = -1) -> Tensor:
    """x[start:stop:step] along one axis (like torch.narrow with a step)."""
    x = _t(em, x, loc)
    shape = em.type(x).shape
    ax = normalize_axes((_int(axis, "axis", loc),), len(shape))[0]
    size = shape[ax]
    if not isinstance(size, int):
        raise DSLError(f"slice: axis {ax} has the symbolic size {size}; only ':' indexing "
                       f"can take all of it", loc)
    if _int(step, "step", loc) < 1:
        raise DSLError(f"slice steps must be positive, found {step}", loc)
    lo, hi, _ = slice(_int(start, "start", loc), _int(stop, "stop", loc)).indices(size)
    return _slice_axis(em, x, ax, lo, max(lo, hi), loc, step)


@builtin
def flatten(em: Any, loc: Loc, x: Any, start: int = 1) -> Tensor:
    x = _t(em, x, loc)
    shape = em.type(x).shape
    s = normalize_axes((start,), len(shape))[0]
    return em.add(Op.RESHAPE, (x,), {"shape": shape[:s] + (dims.prod(shape[s:]),)}, loc)


@builtin
def squeeze(em: Any, loc: Loc, x: Any, axis: int) -> Tensor:
    x = _t(em, x, loc)
    shape = em.type(x).shape
    ax = normalize_axes((axis,), len(shape))[0]
    if shape[ax] != 1:
        raise DSLError(f"squeeze: axis {ax} has size {shape[ax]}, expected 1", loc)
    return em.add(Op.RESHAPE, (x,), {"shape": shape[:ax] + shape[ax + 1:]}, loc)


@builtin
def unsqueeze(em: Any, loc: Loc, x: Any, axis: int) -> Tensor:
    x = _t(em, x, loc)
    shape = em.type(x).shape
    ax = normalize_axes((axis,), len(shape) + 1)[0]
    return em.add(Op.RESHAPE, (x,), {"shape": shape[:ax] + (1,) + shape[ax:]}, loc)


# ---- creation -----------------------------------------------------------------------

@builtin
def zeros(em: Any, loc: Loc, *shape: Any) -> Tensor:
    return full(em, loc, 0.0, *shape)


@builtin
def ones(em: Any, loc: Loc, *shape: Any) -> Tensor:
    return full(em, loc, 1.0, *shape)


@builtin
def full(em: Any, loc: Loc, value: float, *shape: Any) -> Tensor:
    if not isinstance(value, (int, float)):
        raise DSLError(f"full: the fill value must be a number, found {describe(value)}", loc)
    return em.add(Op.FULL, (), {"value": float(value), "shape": _shape_args(shape, loc),
                                "dtype": em.float_dtype}, loc)


@builtin
def arange(em: Any, loc: Loc, n: Any) -> Tensor:
    return em.add(Op.IOTA, (), {"shape": _shape_args((n,), loc), "axis": 0,
                                "dtype": DType.I32}, loc)


@builtin
def causal_mask(em: Any, loc: Loc, n: Any) -> Tensor:
    """[n, n] bool, true where the key index <= the query index."""
    shape = _shape_args((n, n), loc)
    rows = em.add(Op.IOTA, (), {"shape": shape, "axis": 0, "dtype": DType.I32}, loc)
    cols = em.add(Op.IOTA, (), {"shape": shape, "axis": 1, "dtype": DType.I32}, loc)
    return em.add(Op.GE, (rows, cols), {}, loc)


# ---- networks ---------------------------------------------------------------------

@builtin
def softmax(em: Any, loc: Loc, x: Any, axis: int = -1) -> Tensor:
    x = _t(em, x, loc)
    ax = _axes(em, x, axis, loc)
    e = em.add(Op.EXP, (_center(em, x, ax, loc),), {}, loc)
    return em.add(Op.DIV, (e, _reduce(em, Op.SUM, e, ax, loc)), {}, loc)


def _center(em: Any, x: Tensor, ax: tuple[int, ...], loc: Loc) -> Tensor:
    """x - max(x): the shift that keeps exp from overflowing. It cancels out of
    the result, so its derivative is zero: stop_grad says so exactly rather than
    leaving the backward pass to cancel two rounded terms."""
    shift = em.add(Op.STOP_GRAD, (_reduce(em, Op.MAX, x, ax, loc),), {}, loc)
    return em.add(Op.SUB, (x, shift), {}, loc)


@builtin
def log_softmax(em: Any, loc: Loc, x: Any, axis: int = -1) -> Tensor:
    x = _t(em, x, loc)
    ax = _axes(em, x, axis, loc)
    s = _center(em, x, ax, loc)
    total = _reduce(em, Op.SUM, em.add(Op.EXP, (s,), {}, loc), ax, loc)
    return em.add(Op.SUB, (s, em.add(Op.LOG, (total,), {}, loc)), {}, loc)


def _count(em: Any, n: Any, like: Tensor, loc: Loc) -> Tensor:
    """The element count n (an int or a symbolic dim) as a float scalar of like's dtype."""
    if isinstance(n, int):
        return _fconst(em, like, float(n), loc)
    return em.add(Op.CAST, (em.add(Op.DIM, (), {"dim": n}, loc),), {"dtype": em.type(like).dtype},
                  loc)


@builtin
def dropout(em: Any, loc: Loc, x: Any, p: float = 0.5) -> Tensor:
    """Identity in eval mode; when training, keep each element with probability 1-p
    (mask drawn by RAND, see runtime/rand.py) and scale kept ones by 1/(1-p);
    p = 1 drops everything: x * 0, as torch (so inf and NaN become NaN)."""
    x = _t(em, x, loc)
    if not isinstance(p, (int, float)) or isinstance(p, bool) or not 0 <= p <= 1:
        raise DSLError(f"dropout probability must be in [0, 1], found {describe(p)}", loc)
    if not em.train or p == 0 or not em.ctx.options.dropout:
        return x
    if p == 1:
        return em.add(Op.MUL, (x, _fconst(em, x, 0.0, loc)), {}, loc)
    shape = em.type(x).shape
    u = em.add(Op.RAND, em.loop_steps(), {"shape": shape, "stream": em.new_stream("dropout")},
               loc)
    keep = em.add(Op.GE, (u, em.const(float(p), DType.F32, loc)), {}, loc)
    scaled = em.add(Op.MUL, (x, _fconst(em, x, 1.0 / (1.0 - p), loc)), {}, loc)
    return em.add(Op.WHERE, (keep, scaled, _fconst(em, x, 0.0, loc)), {}, loc)


@builtin
def conv2d(em: Any, loc: Loc, x: Any, w: Any, stride: Any = 1, padding: Any = 0,
           dilation: Any = 1, groups: int = 1) -> Tensor:
    attrs = {"stride": _pair(stride, "stride", loc),
             "padding": _pair(padding, "padding", loc, least=0),
             "dilation": _pair(dilation, "dilation", loc), "groups": _int(groups, "groups", loc)}
    return em.add(Op.CONV2D, (_t(em, x, loc), _t(em, w, loc)), attrs, loc)


@builtin
def embedding(em: Any, loc: Loc, table: Any, ids: Any) -> Tensor:
    return em.add(Op.GATHER, (_t(em, table, loc), _t(em, ids, loc)), {}, loc)


@builtin
def one_hot(em: Any, loc: Loc, labels: Any, n: int) -> Tensor:
    return em.add(Op.CAST, (_hot(em, loc, labels, n),), {"dtype": em.float_dtype}, loc)


def _hot(em: Any, loc: Loc, labels: Any, n: int) -> Tensor:
    """labels.shape + [n] bools, true at each label's class."""
    y = _t(em, labels, loc)
    shape = em.type(y).shape
    classes = em.add(Op.IOTA, (), {"shape": (1,) * len(shape) + (_int(n, "n", loc),),
                                   "axis": len(shape), "dtype": em.type(y).dtype}, loc)
    col = em.add(Op.RESHAPE, (y,), {"shape": shape + (1,)}, loc)
    return em.add(Op.EQ, (col, classes), {}, loc)


@builtin
def cross_entropy(em: Any, loc: Loc, logits: Any, labels: Any) -> Tensor:
    """Mean over all positions of -log softmax(logits)[label], classes on the last axis.
    The label's log-probability is selected with `where`, not multiplied by a
    one-hot: a masked (-inf) class, or one whose shifted logit overflows to
    -inf, would make -inf * 0 = NaN."""
    z = _t(em, logits, loc)
    t = em.type(z)
    mine = em.add(Op.WHERE, (_hot(em, loc, labels, t.shape[-1]), log_softmax(em, loc, z),
                             _fconst(em, z, 0.0, loc)), {}, loc)
    picked = em.add(Op.SUM, (mine,), {"axes": (t.rank - 1,), "keepdims": False}, loc)
    loss = em.add(Op.MEAN, (picked,), {"axes": tuple(range(t.rank - 1)), "keepdims": False}, loc)
    return em.add(Op.NEG, (loss,), {}, loc)


@builtin
def mse(em: Any, loc: Loc, pred: Any, target: Any) -> Tensor:
    d = binary(em, "-", pred, target, loc)
    sq = em.add(Op.MUL, (d, d), {}, loc)
    return em.add(Op.MEAN, (sq,), {"axes": tuple(range(em.type(sq).rank)), "keepdims": False}, loc)


# The other builtins register themselves on import (after everything above exists).
from . import einsum, layout_builtins, math_builtins, nn_builtins, norm_builtins, topk  # noqa: E402, F401, I001
