"""Shape and dtype rules: abstract interpretation of every primitive.

`shape_rules[op](input_types, attrs) -> type` is the single definition of what
shape and dtype an op produces. The Builder applies it to every node it adds;
`passes.infer_shapes` re-applies it to check a whole graph. A rule raises
ShapeError with a message naming both shapes; the caller adds the location.
"""

from __future__ import annotations

from typing import Any

from . import dims
from .dims import Dim, Shape, fmt
from .dtypes import DType
from .graph import ShapeError, TensorType, Type
from .ops import BINARY, COMPARE, LOGICAL, REDUCE, UNARY, Op


def _t(shape: Shape, dtype: DType) -> TensorType:
    return TensorType(tuple(shape), dtype)


def broadcast_shapes(a: Shape, b: Shape) -> Shape:
    """NumPy broadcasting on possibly symbolic dims; ShapeError if they clash."""
    out: list[Dim] = []
    for k in range(1, max(len(a), len(b)) + 1):
        da = a[-k] if k <= len(a) else 1
        db = b[-k] if k <= len(b) else 1
        if da == db or db == 1:
            out.append(da)
        elif da == 1:
            out.append(db)
        else:
            raise ShapeError(f"cannot broadcast shapes {fmt(a)} and {fmt(b)}: "
                             f"dimension {da} does not match {db}")
    return tuple(reversed(out))


def _same_dtype(op: Op, ts: list[TensorType]) -> DType:
    if len({t.dtype for t in ts}) != 1:
        found = " and ".join(str(t) for t in ts)
        raise ShapeError(f"{op.value} expects operands of one dtype, found {found}")
    return ts[0].dtype


def _unary(ins: list[TensorType], attrs: dict[str, Any], op: Op) -> TensorType:
    (x,) = ins
    if op is Op.CAST:
        return _t(x.shape, attrs["dtype"])
    if op is Op.STOP_GRAD:
        return x
    if op is Op.NOT:
        _expect_dtype(op, x, DType.BOOL)
    elif op in (Op.NEG, Op.ABS):
        # Numeric, not bool: as in torch (NumPy's negative raises on bool, and its
        # abs of a bool is the identity); a mask is inverted with logical_not.
        if x.dtype is DType.BOOL:
            raise ShapeError(f"{op.value} expects a numeric tensor, found {x} "
                             f"(use logical_not to invert a mask)")
    elif not x.dtype.is_float:
        raise ShapeError(f"{op.value} expects a float tensor, found {x}")
    return x


def _expect_dtype(op: Op, x: TensorType, dtype: DType) -> None:
    if x.dtype != dtype:
        raise ShapeError(f"{op.value} expects a {dtype} tensor, found {x}")


def _binary(ins: list[TensorType], attrs: dict[str, Any], op: Op) -> TensorType:
    dtype = _same_dtype(op, ins)
    shape = broadcast_shapes(ins[0].shape, ins[1].shape)
    if op in LOGICAL:
        _expect_dtype(op, ins[0], DType.BOOL)
    elif op in (Op.DIV, Op.POW) and not dtype.is_float:
        raise ShapeError(f"{op.value} expects float tensors, found {ins[0]} and {ins[1]}")
    return _t(shape, DType.BOOL if op in COMPARE else dtype)


def _where(ins: list[TensorType], attrs: dict[str, Any]) -> TensorType:
    cond, a, b = ins
    _expect_dtype(Op.WHERE, cond, DType.BOOL)
    dtype = _same_dtype(Op.WHERE, [a, b])
    return _t(broadcast_shapes(cond.shape, broadcast_shapes(a.shape, b.shape)), dtype)


def normalize_axes(axes: tuple[int, ...], rank: int) -> tuple[int, ...]:
    """Negative axes counted from the end; ShapeError when out of range."""
    out = []
    for a in axes:
        if not -rank <= a < rank:
            raise ShapeError(f"axis {a} is out of range for a tensor of rank {rank}")
        out.append(a % rank)
    return tuple(sorted(set(out)))


def _reduce(ins: list[TensorType], attrs: dict[str, Any], op: Op) -> TensorType:
    (x,) = ins
    axes = attrs["axes"]
    if axes != normalize_axes(axes, x.rank):
        raise ShapeError(f"{op.value} axes must be sorted and non-negative, found {axes}")
    if op is Op.MEAN and not x.dtype.is_float:
        raise ShapeError(f"mean expects a float tensor, found {x}")
    if op is Op.SUM and x.dtype is DType.BOOL:
        # The result keeps the operand's dtype, so a bool sum would be any(), where
        # torch counts the true elements; counting needs a numeric operand.
        raise ShapeError(f"sum expects a numeric tensor, found {x} "
                         f"(use to_float to count true elements)")
    if op is Op.ARGMAX and len(axes) != 1:
        raise ShapeError(f"argmax reduces exactly one axis, found axes {axes}")
    if op in (Op.MAX, Op.MIN, Op.ARGMAX) and any(x.shape[a] == 0 for a in axes):
        raise ShapeError(f"{op.value} of an empty axis has no value ({x})")
    if attrs["keepdims"]:
        shape = tuple(1 if i in axes else d for i, d in enumerate(x.shape))
    else:
        shape = tuple(d for i, d in enumerate(x.shape) if i not in axes)
    return _t(shape, DType.I32 if op is Op.ARGMAX else x.dtype)


def _leaf(ins: list[TensorType], attrs: dict[str, Any]) -> TensorType:
    return _t(attrs["shape"], attrs["dtype"])


def _const(ins: list[TensorType], attrs: dict[str, Any]) -> TensorType:
    return _t((), attrs["dtype"])


def _dim(ins: list[TensorType], attrs: dict[str, Any]) -> TensorType:
    return _t((), DType.I32)


def _rand(ins: list[TensorType], attrs: dict[str, Any]) -> TensorType:
    # operands, if any, are the counters of the enclosing loops: one mask per step
    if any(t.shape != () or not t.dtype.is_int for t in ins):
        raise ShapeError(f"rand's operands must be integer loop counters, found {ins}")
    return _t(attrs["shape"], DType.F32)


def _reshape(ins: list[TensorType], attrs: dict[str, Any]) -> TensorType:
    (x,) = ins
    target = tuple(attrs["shape"])
    if dims.prod(target) != dims.prod(x.shape):
        raise ShapeError(f"cannot reshape {x} to {fmt(target)}: "
                         f"{dims.prod(x.shape)} elements vs {dims.prod(target)}")
    return _t(target, x.dtype)


def _permute(ins: list[TensorType], attrs: dict[str, Any]) -> TensorType:
    (x,) = ins
    perm = attrs["perm"]
    if sorted(perm) != list(range(x.rank)):
        raise ShapeError(f"permutation {perm} does not fit a tensor of rank {x.rank} ({x})")
    return _t(tuple(x.shape[p] for p in perm), x.dtype)


def _expand(ins: list[TensorType], attrs: dict[str, Any]) -> TensorType:
    (x,) = ins
    target = tuple(attrs["shape"])
    if len(target) < x.rank or broadcast_shapes(x.shape, target) != target:
        raise ShapeError(f"cannot broadcast {x} to {fmt(target)}")
    return _t(target, x.dtype)


def slice_length(size: Dim, start: int, stop: Dim, step: int) -> Dim:
    """Length of range(start, stop, step) clipped to a dim of `size` (step > 0)."""
    if stop == size and start == 0 and step == 1:
        return size
    if not (isinstance(size, int) and isinstance(stop, int)):
        raise ShapeError(f"slicing a symbolic dimension {size} needs the full range ':'")
    lo, hi, _ = slice(start, stop, step).indices(size)
    return max(0, -(-(hi - lo) // step))  # len(range(...)), which overflows past 2^63


def _slice(ins: list[TensorType], attrs: dict[str, Any]) -> TensorType:
    (x,) = ins
    parts = zip(x.shape, attrs["starts"], attrs["stops"], attrs["steps"], strict=True)
    return _t(tuple(slice_length(*p) for p in parts), x.dtype)


def pad_length(size: Dim, low: int, high: int, interior: int) -> Dim:
    """Length after `interior` zeros between elements and `low`/`high` at the ends."""
    if (low, high, interior) == (0, 0, 0):
        return size
    if not isinstance(size, int):
        raise ShapeError(f"padding a symbolic dimension {size} is not supported")
    out = size + low + high + interior * max(size - 1, 0)
    if out < 0 or interior < 0:
        raise ShapeError(f"padding ({low}, {high}, interior {interior}) of a dimension of "
                         f"size {size} leaves a negative size")
    return out


def _pad(ins: list[TensorType], attrs: dict[str, Any]) -> TensorType:
    (x,) = ins
    parts = zip(x.shape, attrs["lows"], attrs["highs"], attrs["interiors"], strict=True)
    return _t(tuple(pad_length(*p) for p in parts), x.dtype)


def _flip(ins: list[TensorType], attrs: dict[str, Any]) -> TensorType:
    (x,) = ins
    if attrs["axes"] != normalize_axes(attrs["axes"], x.rank):
        raise ShapeError(f"flip axes must be sorted and non-negative, found {attrs['axes']}")
    return x


def _concat(ins: list[TensorType], attrs: dict[str, Any]) -> TensorType:
    axis = attrs["axis"]
    dtype = _same_dtype(Op.CONCAT, ins)
    first = ins[0]
    total: Dim = 0
    for t in ins:
        rest_ok = t.rank == first.rank and all(
            a == b for i, (a, b) in enumerate(zip(t.shape, first.shape)) if i != axis)
        if not rest_ok:
            raise ShapeError(f"concat along axis {axis} needs equal other dims, "
                             f"found {first} and {t}")
        total = _add_dims(total, t.shape[axis])
    return _t(first.shape[:axis] + (total,) + first.shape[axis + 1:], dtype)


def _add_dims(a: Dim, b: Dim) -> Dim:
    if isinstance(a, int) and isinstance(b, int):
        return a + b
    if a == 0:
        return b
    raise ShapeError(f"concat of symbolic dimensions {a} and {b} is not supported")


def _index(ins: list[TensorType], attrs: dict[str, Any]) -> TensorType:
    x, i = ins
    if i.shape != () or not i.dtype.is_int:
        raise ShapeError(f"an index must be an integer scalar, found {i}")
    axis = attrs["axis"]
    return _t(x.shape[:axis] + x.shape[axis + 1:], x.dtype)


def _gather(ins: list[TensorType], attrs: dict[str, Any]) -> TensorType:
    table, ids = ins
    if not ids.dtype.is_int:
        raise ShapeError(f"embedding ids must be integers, found {ids}")
    return _t(ids.shape + table.shape[1:], table.dtype)


def accumulator(dtype: DType) -> DType:
    """What a dot-product op (matmul, conv2d, attention) returns: bf16 and f16
    operands accumulate in f32 and the f32 sum is the result, as a tensor
    core's accumulator; casting it back to 16 bits is a separate, explicit op."""
    return DType.F32 if dtype.is_low else dtype


def _matmul(ins: list[TensorType], attrs: dict[str, Any]) -> TensorType:
    a, b = ins
    dtype = accumulator(_same_dtype(Op.MATMUL, ins))
    if a.rank < 2 or b.rank < 2:
        raise ShapeError(f"matmul needs operands of rank >= 2, found {a} @ {b}")
    if a.shape[-1] != b.shape[-2]:
        raise ShapeError(f"matmul inner dimensions differ: {a} @ {b} "
                         f"({a.shape[-1]} vs {b.shape[-2]})")
    batch = broadcast_shapes(a.shape[:-2], b.shape[:-2])
    return _t(batch + (a.shape[-2], b.shape[-1]), dtype)


def window_out(size: Dim, k: int, s: int, p: int, d: int = 1) -> int:
    if not isinstance(size, int):
        raise ShapeError(f"convolution and pooling need static spatial sizes, found {size}")
    out = (size + 2 * p - d * (k - 1) - 1) // s + 1
    if out < 1:
        raise ShapeError(f"window of size {k} (dilation {d}) does not fit input size {size} "
                         f"with padding {p}")
    return out


def _conv2d(ins: list[TensorType], attrs: dict[str, Any]) -> TensorType:
    x, w = ins
    dtype = accumulator(_same_dtype(Op.CONV2D, ins))
    if x.rank != 4 or w.rank != 4:
        raise ShapeError(f"conv2d expects x [N, C, H, W] and w [O, C/groups, KH, KW], "
                         f"found {x} and {w}")
    g = attrs["groups"]
    if x.shape[1] != dims.mul(w.shape[1], g) or dims.div(w.shape[0], g) is None:
        raise ShapeError(f"conv2d channels: input {x} has {x.shape[1]} channels but weight "
                         f"{w} expects {w.shape[1]} x {g} groups")
    (sh, sw), (ph, pw), (dh, dw) = attrs["stride"], attrs["padding"], attrs["dilation"]
    kh, kw = w.shape[2], w.shape[3]
    if not (isinstance(kh, int) and isinstance(kw, int)):
        raise ShapeError(f"conv2d needs a static kernel size, found {w}")
    oh = window_out(x.shape[2], kh, sh, ph, dh)
    ow = window_out(x.shape[3], kw, sw, pw, dw)
    return _t((x.shape[0], w.shape[0], oh, ow), dtype)


def _pool(ins: list[TensorType], attrs: dict[str, Any]) -> TensorType:
    (x,) = ins
    if x.rank != 4 or not x.dtype.is_float:
        raise ShapeError(f"pooling expects a float tensor [N, C, H, W], found {x}")
    (kh, kw), (sh, sw), (ph, pw) = attrs["kernel"], attrs["stride"], attrs["padding"]
    if 2 * ph > kh or 2 * pw > kw:
        raise ShapeError(f"pool padding {attrs['padding']} must be at most half "
                         f"the kernel {attrs['kernel']}")
    oh, ow = window_out(x.shape[2], kh, sh, ph), window_out(x.shape[3], kw, sw, pw)
    return _t((x.shape[0], x.shape[1], oh, ow), x.dtype)


def _pool_grad(ins: list[TensorType], attrs: dict[str, Any]) -> TensorType:
    x, dy = ins
    if _pool([x], attrs) != dy:
        raise ShapeError(f"max_pool2d_grad: the gradient {dy} does not match the pooled {x}")
    return x


def score_type(ins: list[TensorType]) -> TensorType:
    """The raw scores q @ k^T of an attention op's (q, k, ...), after checking
    that q [..., T, DK], k [..., TK, DK] and v [..., TK, D] agree."""
    q, k, v = ins[:3]
    if any(t.rank < 2 or t.shape[:-2] != q.shape[:-2] for t in (q, k, v)) or not (
            q.shape[-1] == k.shape[-1] and k.shape[-2] == v.shape[-2]):
        raise ShapeError(f"attention expects q [..., T, DK], k [..., TK, DK], v [..., TK, D] "
                         f"with one batch shape, found {q}, {k}, {v}")
    if not q.dtype.is_float or len({q.dtype, k.dtype, v.dtype}) != 1:
        raise ShapeError(f"attention expects q, k, v of one float dtype, found {q}, {k}, {v}")
    return _t(q.shape[:-1] + k.shape[-2:-1], accumulator(q.dtype))


def score_inputs(op: Op, ins: list[TensorType]) -> list[TensorType]:
    """What an attention op's region takes: the scores (and, for the backward,
    the logits' cotangent, of the same type), then the captured operands."""
    s = score_type(ins)
    return [s, *ins[3:]] if op is Op.ATTENTION else [s, s, *ins[6:]]


def _region_outputs(op: Op, attrs: dict[str, Any], s: TensorType) -> None:
    body = attrs["body"]
    outs = [body[o].type for o in body.outputs]
    expected = [s] if op is Op.ATTENTION else [s, s]
    if outs != expected:
        raise ShapeError(f"{op.value}: its score region returns "
                         f"{', '.join(map(str, outs))}, expected {', '.join(map(str, expected))}")


def _results(s: TensorType, v: TensorType) -> tuple[TensorType, TensorType]:
    return _t(s.shape[:-1] + v.shape[-1:], s.dtype), _t(s.shape[:-1], s.dtype)


def _attention(ins: list[TensorType], attrs: dict[str, Any]) -> Type:
    """(o [..., T, D], lse [..., T])."""
    s = score_type(ins)
    _region_outputs(Op.ATTENTION, attrs, s)
    return _results(s, ins[2])


def _attention_grad(ins: list[TensorType], attrs: dict[str, Any]) -> Type:
    """(dq, dk, dv), shaped as q, k, v in the scores' dtype; do, lse and delta
    typed as o and lse (do may also be in q's 16-bit dtype: it feeds products)."""
    s = score_type(ins)
    _region_outputs(Op.ATTENTION_GRAD, attrs, s)
    o, lse = _results(s, ins[2])
    dos = (o, _t(o.shape, ins[0].dtype))
    if len(ins) < 6 or ins[3] not in dos or ins[4:6] != [lse, lse]:
        raise ShapeError(f"attention_grad expects do {o}, lse {lse} and delta {lse}, found "
                         f"{', '.join(map(str, ins[3:6]))}")
    return tuple(_t(t.shape, s.dtype) for t in ins[:3])


def _foreach(ins: list[TensorType], attrs: dict[str, Any]) -> Type:
    """Each group's results, at the group's shape, in group order."""
    body, groups, arity = attrs["body"], attrs["groups"], attrs["arity"]
    if groups * arity > len(ins) or any(t.shape != () for t in ins[groups * arity:]):
        raise ShapeError(f"foreach takes {groups} groups of {arity} tensors, then 0-d "
                         f"scalars, found {', '.join(map(str, ins))}")
    out: list[TensorType] = []
    for k in range(groups):
        group = ins[k * arity:(k + 1) * arity]
        if any(t.shape != group[0].shape for t in group):
            raise ShapeError(f"foreach group {k} mixes shapes: {', '.join(map(str, group))}")
        out += [_t(group[0].shape, body[o].tensor.dtype) for o in body.outputs]
    if attrs.get("reduce"):
        return tuple(_t((), body[o].tensor.dtype) for o in body.outputs)
    return tuple(out)


def foreach_body_inputs(ins: list[TensorType], attrs: dict[str, Any]) -> list[TensorType]:
    """What a foreach region takes: each operand of a group as a 0-d value, then
    the scalars."""
    arity, scalars = attrs["arity"], ins[attrs["groups"] * attrs["arity"]:]
    return [_t((), t.dtype) for t in ins[:arity]] + list(scalars)


def _region(ins: list[TensorType], attrs: dict[str, Any]) -> Type:
    body = attrs["body"]
    return tuple(body[o].tensor for o in body.outputs)


def _scan(ins: list[TensorType], attrs: dict[str, Any]) -> Type:
    """A scan yields its final carries, then each per-step output stacked [length, ...]."""
    body, k = attrs["body"], attrs["n_carry"]
    outs = [body[o].tensor for o in body.outputs]
    return (*outs[:k], *(_t((attrs["length"], *t.shape), t.dtype) for t in outs[k:]))


def _get(ins: list[Type], attrs: dict[str, Any]) -> Type:
    (tup,) = ins
    if not isinstance(tup, tuple):
        raise ShapeError(f"get reads a region's results, found a single tensor {tup}")
    return tup[attrs["index"]]


shape_rules: dict[Op, Any] = {
    Op.INPUT: _leaf, Op.PARAM: _leaf, Op.FULL: _leaf, Op.CONST: _const,
    Op.IOTA: _leaf, Op.RAND: _rand, Op.DIM: _dim,
    **{op: (lambda ins, attrs, op=op: _unary(ins, attrs, op)) for op in UNARY},
    **{op: (lambda ins, attrs, op=op: _binary(ins, attrs, op)) for op in BINARY},
    Op.WHERE: _where,
    **{op: (lambda ins, attrs, op=op: _reduce(ins, attrs, op)) for op in REDUCE},
    Op.RESHAPE: _reshape, Op.PERMUTE: _permute, Op.EXPAND: _expand, Op.SLICE: _slice,
    Op.CONCAT: _concat, Op.INDEX: _index, Op.GATHER: _gather, Op.PAD: _pad, Op.FLIP: _flip,
    Op.MATMUL: _matmul, Op.CONV2D: _conv2d, Op.MAX_POOL2D: _pool, Op.AVG_POOL2D: _pool,
    Op.MAX_POOL2D_GRAD: _pool_grad,
    Op.ATTENTION: _attention, Op.ATTENTION_GRAD: _attention_grad,
    Op.CALL: _region, Op.LOOP: _scan, Op.GET: _get, Op.FOREACH: _foreach,
}
