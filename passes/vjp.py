"""vjp_rules: the reverse-mode derivative of every differentiable primitive.

`vjp_rules[op](e, n, x, y, d)` receives the forward node `n`, the ids of its
operands `x` and of its result `y` in the graph being built, and the id `d` of
the cotangent of `y`; it appends the backward nodes through `e` (at `n`'s
source location) and returns one cotangent id per operand, or None for an
operand that gets no gradient (an integer index, a condition). Every rule is
written with primitives only, so the backward graph goes through the same
fusion and code generation as the forward one: the transpose of a slice is a
PAD, of an embedding lookup a one-hot matmul (deterministic: no scatter), of
conv2d two more conv2d over views (an implicit GEMM each, no im2col buffer).
The exception is attention, whose result is a tuple (o, lse): like a scan's
(passes/scan_grad.py), its rule gets `d` as {result index: cotangent} and
which operands are active, and emits one attention_grad op, so the backward
never materializes the T x T probabilities.

Non-smooth points follow PyTorch: relu'(0) = 0, |x|'(0) = 0, ties of
maximum/minimum split the gradient in half, ties of max/min reductions share
it evenly (as torch.amax), max-pool routes it to the first maximum.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ember.ir import dims
from ember.ir.dims import Dim, Shape
from ember.ir.graph import Builder, Graph, Node, TensorType
from ember.ir.loc import Loc
from ember.ir.ops import COMPARE, LEAF, LOGICAL, Op

from .rewrite import copy_node

Ct = int | None


@dataclass
class Emit:
    """Appends backward nodes at one forward node's source location."""

    b: Builder
    loc: Loc

    def __call__(self, op: Op, *srcs: int, **attrs: Any) -> int:
        return self.b.add(op, tuple(srcs), attrs, self.loc)

    def type(self, i: int) -> TensorType:
        return self.b.type_of(i)

    def shape(self, i: int) -> Shape:
        return self.b.type_of(i).shape

    def const(self, value: float, like: int) -> int:
        return self(Op.CONST, value=value, dtype=self.type(like).dtype)

    def zeros(self, t: TensorType) -> int:
        return self(Op.FULL, value=0.0, shape=t.shape, dtype=t.dtype)

    def where(self, cond: int, a: int, b: int) -> int:
        return self(Op.WHERE, cond, a, b)

    def zero_where(self, cond: int, d: int) -> int:
        """d, but 0 where cond holds."""
        return self.where(cond, self.const(0.0, d), d)

    def reshape(self, x: int, shape: Shape) -> int:
        return x if self.shape(x) == tuple(shape) else self(Op.RESHAPE, x, shape=tuple(shape))

    def permute(self, x: int, perm: Sequence[int]) -> int:
        return self(Op.PERMUTE, x, perm=tuple(perm))

    def count(self, n: Dim, like: int) -> int:
        """The number n (possibly a runtime dimension) as a float scalar."""
        if isinstance(n, int):
            return self.const(float(n), like)
        return self(Op.CAST, self(Op.DIM, dim=n), dtype=self.type(like).dtype)


def unbroadcast(e: Emit, d: int, shape: Shape) -> int:
    """Sum d over the axes along which an operand of `shape` was broadcast."""
    full = e.shape(d)
    lead = len(full) - len(shape)
    axes = tuple(range(lead)) + tuple(lead + k for k, s in enumerate(shape)
                                      if s == 1 and full[lead + k] != 1)
    if axes:
        d = e(Op.SUM, d, axes=axes, keepdims=False)
    return e.reshape(d, shape)


def _binary(fn: Callable[[Emit, list[int], int, int], tuple[Ct, Ct]]) -> Any:
    """A binary rule written on broadcast shapes, summed back to each operand's."""
    def rule(e: Emit, n: Node, x: list[int], y: int, d: int) -> list[Ct]:
        return [None if c is None else unbroadcast(e, c, e.shape(s))
                for c, s in zip(fn(e, x, y, d), x)]
    return rule


def _unary(fn: Callable[[Emit, int, int, int], int]) -> Any:
    return lambda e, n, x, y, d: [fn(e, x[0], y, d)]


# ---- elementwise ----------------------------------------------------------------

def _mul(e: Emit, x: list[int], y: int, d: int) -> tuple[Ct, Ct]:
    return e(Op.MUL, d, x[1]), e(Op.MUL, d, x[0])


def _div(e: Emit, x: list[int], y: int, d: int) -> tuple[Ct, Ct]:
    # d(a / b)/db = -a / b^2 = -y / b
    return e(Op.DIV, d, x[1]), e(Op.NEG, e(Op.DIV, e(Op.MUL, d, y), x[1]))


def _pow(e: Emit, x: list[int], y: int, d: int) -> tuple[Ct, Ct]:
    a, p = x
    # torch: grad * p * a^(p-1), zero where p == 0 (so 0^0 has no 0 * inf)
    p_minus_1 = e(Op.SUB, p, e.const(1.0, p))
    da = e(Op.MUL, d, e(Op.MUL, p, e(Op.POW, a, p_minus_1)))
    da = e.zero_where(e(Op.EQ, p, e.const(0.0, p)), da)
    if e.b.nodes[p].op is Op.CONST:
        return da, None
    # torch: grad * a^p * log(a), zero where a == 0 and p >= 0
    dp = e(Op.MUL, d, e(Op.MUL, y, e(Op.LOG, a)))
    zero_base = e(Op.AND, e(Op.EQ, a, e.const(0.0, a)), e(Op.GE, p, e.const(0.0, p)))
    return da, e.zero_where(zero_base, dp)


def _extremum(first_loses: Op) -> Callable[[Emit, list[int], int, int], tuple[Ct, Ct]]:
    """maximum (first loses where a < b) and minimum (where a > b); ties halve."""
    second_loses = Op.GT if first_loses is Op.LT else Op.LT

    def rule(e: Emit, x: list[int], y: int, d: int) -> tuple[Ct, Ct]:
        a, b = x
        half = e.where(e(Op.EQ, a, b), e(Op.MUL, d, e.const(0.5, d)), d)
        return (e.zero_where(e(first_loses, a, b), half),
                e.zero_where(e(second_loses, a, b), half))
    return rule


def _where(e: Emit, n: Node, x: list[int], y: int, d: int) -> list[Ct]:
    c, a, b = x
    zero = e.const(0.0, d)
    return [None, unbroadcast(e, e.where(c, d, zero), e.shape(a)),
            unbroadcast(e, e.where(c, zero, d), e.shape(b))]


def _cast(e: Emit, n: Node, x: list[int], y: int, d: int) -> list[Ct]:
    src = e.type(x[0]).dtype
    return [e(Op.CAST, d, dtype=src) if src.is_float else None]


def _abs(e: Emit, a: int, y: int, d: int) -> int:
    zero = e.const(0.0, a)
    return e.where(e(Op.GT, a, zero), d, e.where(e(Op.LT, a, zero), e(Op.NEG, d), zero))


def _erf(e: Emit, a: int, y: int, d: int) -> int:
    gauss = e(Op.EXP, e(Op.NEG, e(Op.MUL, a, a)))
    return e(Op.MUL, d, e(Op.MUL, gauss, e.const(2.0 / math.sqrt(math.pi), a)))


def _one_minus(e: Emit, v: int) -> int:
    return e(Op.SUB, e.const(1.0, v), v)


ELEMENTWISE_RULES: dict[Op, Any] = {
    Op.NEG: _unary(lambda e, a, y, d: e(Op.NEG, d)),
    Op.EXP: _unary(lambda e, a, y, d: e(Op.MUL, d, y)),
    Op.LOG: _unary(lambda e, a, y, d: e(Op.DIV, d, a)),
    Op.SQRT: _unary(lambda e, a, y, d: e(Op.DIV, d, e(Op.MUL, y, e.const(2.0, y)))),
    Op.RSQRT: _unary(lambda e, a, y, d: e(Op.MUL, d, e(Op.MUL, e(Op.MUL, y, e(Op.MUL, y, y)),
                                                         e.const(-0.5, y)))),
    Op.ABS: _unary(_abs),
    Op.RELU: _unary(lambda e, a, y, d: e.where(e(Op.GT, y, e.const(0.0, y)), d,
                                               e.const(0.0, d))),
    Op.SIGMOID: _unary(lambda e, a, y, d: e(Op.MUL, d, e(Op.MUL, y, _one_minus(e, y)))),
    Op.TANH: _unary(lambda e, a, y, d: e(Op.MUL, d, _one_minus(e, e(Op.MUL, y, y)))),
    Op.ERF: _unary(_erf),
    Op.CAST: _cast,
    Op.ADD: _binary(lambda e, x, y, d: (d, d)),
    Op.SUB: _binary(lambda e, x, y, d: (d, e(Op.NEG, d))),
    Op.MUL: _binary(_mul),
    Op.DIV: _binary(_div),
    Op.POW: _binary(_pow),
    Op.MAXIMUM: _binary(_extremum(Op.LT)),
    Op.MINIMUM: _binary(_extremum(Op.GT)),
    Op.WHERE: _where,
}


# ---- reductions -------------------------------------------------------------------

def _keepdims_shape(shape: Shape, axes: tuple[int, ...]) -> Shape:
    return tuple(1 if a in axes else s for a, s in enumerate(shape))


def _spread(e: Emit, n: Node, x: int, d: int) -> int:
    """A reduction's cotangent broadcast back over the reduced axes."""
    shape = e.shape(x)
    return e(Op.EXPAND, e.reshape(d, _keepdims_shape(shape, n.attrs["axes"])), shape=shape)


def _sum(e: Emit, n: Node, x: list[int], y: int, d: int) -> list[Ct]:
    return [_spread(e, n, x[0], d)]


def _mean(e: Emit, n: Node, x: list[int], y: int, d: int) -> list[Ct]:
    count = dims.prod(tuple(e.shape(x[0])[a] for a in n.attrs["axes"]))
    return [_spread(e, n, x[0], e(Op.DIV, d, e.count(count, d)))]


def _max(e: Emit, n: Node, x: list[int], y: int, d: int) -> list[Ct]:
    # ties share the gradient evenly, as torch.amax/amin
    hit = e(Op.CAST, e(Op.EQ, x[0], _spread(e, n, x[0], y)), dtype=e.type(d).dtype)
    ties = e(Op.SUM, hit, axes=n.attrs["axes"], keepdims=n.attrs["keepdims"])
    return [e(Op.MUL, hit, _spread(e, n, x[0], e(Op.DIV, d, ties)))]


# ---- movement ---------------------------------------------------------------------

def _expand(e: Emit, n: Node, x: list[int], y: int, d: int) -> list[Ct]:
    return [unbroadcast(e, d, e.shape(x[0]))]


def _permute(e: Emit, n: Node, x: list[int], y: int, d: int) -> list[Ct]:
    perm = n.attrs["perm"]
    return [e.permute(d, [perm.index(k) for k in range(len(perm))])]


def _slice(e: Emit, n: Node, x: list[int], y: int, d: int) -> list[Ct]:
    shape, out = e.shape(x[0]), e.shape(y)
    if 0 in out:
        return [e.zeros(e.type(x[0]))]
    lows, highs = [], []
    for size, start, step, length in zip(shape, n.attrs["starts"], n.attrs["steps"], out):
        lows.append(start)
        highs.append(0 if not isinstance(size, int) else size - start - (length - 1) * step - 1)
    steps = tuple(s - 1 for s in n.attrs["steps"])
    return [e(Op.PAD, d, lows=tuple(lows), highs=tuple(highs), interiors=steps)]


def _pad(e: Emit, n: Node, x: list[int], y: int, d: int) -> list[Ct]:
    """Undo the crops (negative ends) with zeros, then slice the original elements out."""
    lows, highs, mids = n.attrs["lows"], n.attrs["highs"], n.attrs["interiors"]
    zero = tuple(0 for _ in lows)
    if any(v < 0 for v in lows + highs):
        d = e(Op.PAD, d, lows=tuple(max(-v, 0) for v in lows),
              highs=tuple(max(-v, 0) for v in highs), interiors=zero)
    starts = tuple(max(v, 0) for v in lows)
    stops = tuple(st + (s - 1) * (m + 1) + 1 if isinstance(s, int) else s
                  for st, s, m in zip(starts, e.shape(x[0]), mids))
    return [e(Op.SLICE, d, starts=starts, stops=stops, steps=tuple(m + 1 for m in mids))]


def _concat(e: Emit, n: Node, x: list[int], y: int, d: int) -> list[Ct]:
    axis, out, at = n.attrs["axis"], e.shape(y), 0
    cts: list[Ct] = []
    for s in x:
        size = e.shape(s)[axis]
        assert isinstance(size, int) or len(x) == 1, "concat of symbolic dims"
        end = size if not isinstance(size, int) else at + size
        starts = tuple(at if k == axis else 0 for k in range(len(out)))
        stops = tuple(end if k == axis else dim for k, dim in enumerate(out))
        cts.append(e(Op.SLICE, d, starts=starts, stops=stops, steps=(1,) * len(out)))
        at = end if isinstance(end, int) else 0
    return cts


def _index(e: Emit, n: Node, x: list[int], y: int, d: int) -> list[Ct]:
    """x[..., i, ...]: the cotangent placed at row i, zeros elsewhere."""
    shape, axis = e.shape(x[0]), n.attrs["axis"]
    line = tuple(s if k == axis else 1 for k, s in enumerate(shape))
    row = e(Op.EQ, e(Op.IOTA, shape=line, dtype=e.type(x[1]).dtype, axis=axis), x[1])
    spread = e(Op.EXPAND, e.reshape(d, _keepdims_shape(shape, (axis,))), shape=shape)
    return [e.where(row, spread, e.const(0.0, d)), None]


def _gather(e: Emit, n: Node, x: list[int], y: int, d: int) -> list[Ct]:
    """table[ids]: a one-hot matmul, onehot(ids)^T @ d, sums the rows that share
    an id in a fixed order (deterministic, no atomics)."""
    table, ids = x
    rows = e.shape(table)[0]
    count, rest = dims.prod(e.shape(ids)), e.shape(table)[1:]
    flat_ids = e.reshape(ids, (count, 1))
    classes = e(Op.IOTA, shape=(1, rows), dtype=e.type(ids).dtype, axis=1)
    hot = e(Op.CAST, e(Op.EQ, flat_ids, classes), dtype=e.type(d).dtype)
    flat_d = e.reshape(d, (count, dims.prod(rest)))
    return [e.reshape(e(Op.MATMUL, e.permute(hot, (1, 0)), flat_d), e.shape(table)), None]


# ---- compute ----------------------------------------------------------------------

def _matmul(e: Emit, n: Node, x: list[int], y: int, d: int) -> list[Ct]:
    a, b = x
    sa, sb = e.shape(a), e.shape(b)
    if len(sb) == 2 and len(sa) > 2:  # shared weight: one GEMM over all batch rows
        rows = dims.prod(sa[:-1])
        flat_a, flat_d = e.reshape(a, (rows, sa[-1])), e.reshape(d, (rows, sb[-1]))
        return [e(Op.MATMUL, d, _t(e, b)), e(Op.MATMUL, _t(e, flat_a), flat_d)]
    return [unbroadcast(e, e(Op.MATMUL, d, _t(e, b)), sa),
            unbroadcast(e, e(Op.MATMUL, _t(e, a), d), sb)]


def _t(e: Emit, x: int) -> int:
    """Swap the last two axes."""
    r = len(e.shape(x))
    return e.permute(x, (*range(r - 2), r - 1, r - 2))


def _conv2d(e: Emit, n: Node, x: list[int], y: int, d: int) -> list[Ct]:
    return [conv2d_input_grad(e, d, x[1], e.shape(x[0]), n.attrs),
            conv2d_weight_grad(e, x[0], d, e.shape(x[1]), n.attrs)]


def conv2d_input_grad(e: Emit, d: int, w: int, x_shape: Shape, attrs: dict[str, Any]) -> int:
    """dx = conv2d(d dilated by the stride and padded, w flipped with in/out
    channels swapped per group), stride 1, the forward dilation."""
    OC, CG, KH, KW = e.shape(w)
    g, (sh, sw), (ph, pw), (dh, dw) = (attrs["groups"], attrs["stride"], attrs["padding"],
                                       attrs["dilation"])
    _, _, OH, OW = e.shape(d)
    H, W = x_shape[2], x_shape[3]
    assert isinstance(H, int) and isinstance(W, int) and isinstance(OC, int)
    lows = (0, 0, dh * (KH - 1) - ph, dw * (KW - 1) - pw)
    highs = (0, 0, H - (OH - 1) * sh - 1 + ph, W - (OW - 1) * sw - 1 + pw)
    spread = e(Op.PAD, d, lows=lows, highs=highs, interiors=(0, 0, sh - 1, sw - 1))
    grouped = e.reshape(w, (g, OC // g, CG, KH, KW))
    swapped = e.reshape(e.permute(grouped, (0, 2, 1, 3, 4)), (dims.mul(g, CG), OC // g, KH, KW))
    flipped = e(Op.FLIP, swapped, axes=(2, 3))
    return e(Op.CONV2D, spread, flipped, stride=(1, 1), padding=(0, 0), dilation=(dh, dw),
             groups=g)


def conv2d_weight_grad(e: Emit, x: int, d: int, w_shape: Shape, attrs: dict[str, Any]) -> int:
    """dw as a conv2d whose batch is the weight's input channel: x viewed as
    [C/g, g*N, H, W] convolved with d viewed as [O, N, OH, OW] (stride and
    dilation swap roles). When the stride leaves input rows or columns that no
    output reads, the padded input is cropped first (one PAD view), so the
    result is exactly the kernel's size."""
    N, C, H, W = e.shape(x)
    OC, CG, KH, KW = w_shape
    g, (sh, sw), (ph, pw), (dh, dw) = (attrs["groups"], attrs["stride"], attrs["padding"],
                                       attrs["dilation"])
    _, _, OH, OW = e.shape(d)
    assert isinstance(H, int) and isinstance(W, int)
    extra_h = (H + 2 * ph - sh * (OH - 1) - 1) // dh + 1 - KH
    extra_w = (W + 2 * pw - sw * (OW - 1) - 1) // dw + 1 - KW
    if extra_h or extra_w:
        x = e(Op.PAD, x, lows=(0, 0, ph, pw), highs=(0, 0, ph - extra_h * dh, pw - extra_w * dw),
              interiors=(0, 0, 0, 0))
        H, W = H + 2 * ph - extra_h * dh, W + 2 * pw - extra_w * dw
        ph = pw = 0
    split = e.reshape(x, (N, g, CG, H, W))
    batched = e.reshape(e.permute(split, (2, 1, 0, 3, 4)), (CG, dims.mul(g, N), H, W))
    filters = e.permute(d, (1, 0, 2, 3))
    full = e(Op.CONV2D, batched, filters, stride=(dh, dw), padding=(ph, pw),
             dilation=(sh, sw), groups=g)
    return e.permute(full, (1, 0, 2, 3))


def _avg_pool2d(e: Emit, n: Node, x: list[int], y: int, d: int) -> list[Ct]:
    """The transpose of a depthwise conv2d with a constant 1/(kh*kw) kernel."""
    C = e.shape(x[0])[1]
    kh, kw = n.attrs["kernel"]
    ones = e(Op.FULL, value=1.0 / (kh * kw), shape=(C, 1, kh, kw), dtype=e.type(d).dtype)
    attrs = {"groups": C, "stride": n.attrs["stride"], "padding": n.attrs["padding"],
             "dilation": (1, 1)}
    return [conv2d_input_grad(e, d, ones, e.shape(x[0]), attrs)]


def _max_pool2d(e: Emit, n: Node, x: list[int], y: int, d: int) -> list[Ct]:
    return [e(Op.MAX_POOL2D_GRAD, x[0], d, **n.attrs)]


# ---- attention ------------------------------------------------------------------

def _attention(e: Emit, n: Node, x: list[int], y: int, cts: dict[int, int],
               active: list[bool]) -> list[Ct]:
    """FlashAttention-2's backward as one op (dq, dk, dv) from the saved lse and
    delta = rowsum(do * o); a cotangent of lse folds into delta (d lse / dx = p)."""
    q, k, v, *captured = x
    o, lse = (e(Op.GET, y, index=i) for i in (0, 1))
    do = cts[0] if 0 in cts else e.zeros(e.type(o))
    delta = e(Op.SUM, e(Op.MUL, do, o), axes=(len(e.shape(o)) - 1,), keepdims=False)
    if 1 in cts:
        delta = e(Op.SUB, delta, cts[1])
    body = score_grad_region(n.attrs["body"])
    g = e(Op.ATTENTION_GRAD, q, k, v, do, lse, delta, *captured, causal=n.attrs["causal"],
          body=body)
    return [*(e(Op.GET, g, index=i) for i in range(3)),
            *_captured(e, n, x, active, (do, lse, delta))]


def score_grad_region(body: Graph) -> Graph:
    """The backward's region: (s, dx, captured...) -> (logits, ds), the score_mod
    region and its derivative, written by these same rules."""
    from .grad import activity, backprop, copy_forward, total
    b = Builder("score_grad")
    ins = [copy_node(b, body.nodes[i], ()) for i in body.inputs]
    s = body.nodes[body.inputs[0]]
    dx = b.add(Op.INPUT, (), {**s.attrs, "name": "dx"}, s.loc)
    vals = copy_forward(b, body, set(), dict(zip(body.inputs, ins)))
    out = body.outputs[0]
    cts = backprop(b, body, vals, {out: [dx]}, activity(body, {body.inputs[0]}))
    ds = total(Emit(b, s.loc), cts.get(body.inputs[0], []), s)
    return b.build((ins[0], dx, *ins[1:]), (vals[out], ds), ("logits", "d_scores"))


def _captured(e: Emit, n: Node, x: list[int], active: list[bool],
              saved: tuple[int, int, int]) -> list[Ct]:
    """Gradients of the active captured operands (an additive mask, a learned
    bias): they need the T x T logits' cotangent p (do v^T - delta), so it is
    computed in primitives and sent through the region's own rules."""
    from .grad import activity, backprop, copy_forward, total
    q, k, v, *captured = x
    (do, lse, delta), body = saved, n.attrs["body"]
    seeds = {i for i, on in zip(body.inputs[1:], active[3:]) if on}
    if not seeds:
        return [None] * len(captured)
    vals = copy_forward(e.b, body, set(), dict(zip(body.inputs, [e(Op.MATMUL, q, _t(e, k)),
                                                                 *captured])))
    logits = vals[body.outputs[0]]
    p = e(Op.EXP, e(Op.SUB, logits, e.reshape(lse, (*e.shape(lse), 1))))
    dp = e(Op.SUB, e(Op.MATMUL, do, _t(e, v)), e.reshape(delta, (*e.shape(delta), 1)))
    cts = backprop(e.b, body, vals, {body.outputs[0]: [e(Op.MUL, p, dp)]},
                   activity(body, seeds))
    return [total(e, cts.get(i, []), body.nodes[i]) if i in seeds else None
            for i in body.inputs[1:]]


vjp_rules: dict[Op, Any] = {
    **ELEMENTWISE_RULES,
    Op.SUM: _sum, Op.MEAN: _mean, Op.MAX: _max, Op.MIN: _max,
    Op.RESHAPE: lambda e, n, x, y, d: [e.reshape(d, e.shape(x[0]))],
    Op.PERMUTE: _permute, Op.EXPAND: _expand, Op.SLICE: _slice, Op.CONCAT: _concat,
    Op.INDEX: _index, Op.GATHER: _gather, Op.PAD: _pad,
    Op.FLIP: lambda e, n, x, y, d: [e(Op.FLIP, d, axes=n.attrs["axes"])],
    Op.MATMUL: _matmul, Op.CONV2D: _conv2d,
    Op.MAX_POOL2D: _max_pool2d, Op.AVG_POOL2D: _avg_pool2d,
    Op.ATTENTION: _attention,
}

# Ops whose result has no derivative to propagate: leaves (gradients end at
# PARAM and INPUT, where the pass reads them off), integer or boolean results,
# STOP_GRAD by definition, MAX_POOL2D_GRAD and ATTENTION_GRAD (no second
# derivatives). CALL is inlined and LOOP/GET are handled by the pass itself
# (passes/scan_grad.py).
NON_DIFFERENTIABLE = (LEAF | COMPARE | LOGICAL |
                      {Op.NOT, Op.ARGMAX, Op.STOP_GRAD, Op.MAX_POOL2D_GRAD, Op.ATTENTION_GRAD,
                       Op.FOREACH})
STRUCTURAL = frozenset({Op.CALL, Op.LOOP, Op.GET})
