"""The NumPy oracle: the definition of what every IR op means.

`evaluate(graph, inputs, params, seed)` runs a graph node by node with NumPy.
Each op's meaning is one entry of `eval_rules`; every generated kernel is
checked against this interpreter, and tests pin each rule to PyTorch. After
each node the result is checked against the node's type (shape bound to the
run's dims, dtype exact), so an oracle bug cannot hide behind broadcasting.

bf16 and f16 follow PyTorch's CPU reference: each op reads its 16-bit
operands as float32, computes in float32, and its result is rounded to the
stored type (`ir/dtypes.py`: a bf16 value is a float32 array holding
bf16-representable numbers). Inputs and parameters of those types are rounded
as they are read, as torch's `.to(torch.bfloat16)` would.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from ember.ir import dims
from ember.ir.dtypes import round_to, widen
from ember.ir.graph import Builder, Graph, Node, TensorType
from ember.ir.loc import DSLError
from ember.ir.ops import Op

from .bounds import out_of_range
from .nn_ops import avg_pool2d, conv2d, max_pool2d, max_pool2d_grad
from .rand import stream_seed, uniform


@dataclass
class Ctx:
    """What a rule may need besides its operands."""

    dims: dict[str, int]
    params: dict[str, np.ndarray]
    seed: int


Rule = Callable[[Node, list[Any], Ctx], Any]


def evaluate(g: Graph, inputs: dict[str, np.ndarray], params: dict[str, np.ndarray],
             seed: int = 0, env: dict[str, int] | None = None) -> list[np.ndarray]:
    """Run g on named inputs; return its outputs in order."""
    ctx = Ctx(dict(env or {}), params, seed)
    for i in g.inputs:
        bind_input(g.nodes[i], inputs[g.nodes[i].attrs["name"]], ctx.dims)
    with np.errstate(all="ignore"):  # IEEE results (inf, nan) are the meaning, not warnings
        return run_graph(g, [round_to(inputs[g.nodes[i].attrs["name"]], g.nodes[i].tensor.dtype)
                             for i in g.inputs], ctx)


def bind_input(n: Node, value: np.ndarray, env: dict[str, int]) -> None:
    """Learn symbol values from an input's shape; DSLError if it does not fit."""
    t = n.tensor
    if value.dtype != t.dtype.np or value.ndim != t.rank:
        raise DSLError(f"input '{n.attrs['name']}' expects {t}, found {value.dtype} array of "
                       f"shape {tuple(value.shape)}", n.loc)
    for d, actual in zip(t.shape, value.shape):
        coef, syms = dims.factors(d)
        known = coef * math.prod(env[s] for s in syms if s in env)
        unbound = [s for s in syms if s not in env]
        if len(unbound) == 1 and known and actual % known == 0:
            env[unbound[0]] = actual // known
        elif unbound or known != actual:
            raise DSLError(f"input '{n.attrs['name']}' expects {t}, found shape "
                           f"{tuple(value.shape)} (dimension {d} cannot be {actual} "
                           f"given {_bound(env)})", n.loc)


def _bound(env: dict[str, int]) -> str:
    return ", ".join(f"{k}={v}" for k, v in sorted(env.items())) or "nothing bound"


def run_graph(g: Graph, args: list[Any], ctx: Ctx) -> list[Any]:
    vals: list[Any] = [None] * len(g.nodes)
    for i, a in zip(g.inputs, args):
        vals[i] = a
    for i, n in enumerate(g.nodes):
        if vals[i] is None:
            with np.errstate(over="ignore", divide="ignore", invalid="ignore", under="ignore"):
                args = [widen(vals[s]) for s in n.srcs]
                vals[i] = _checked(n, eval_rules[n.op](n, args, ctx), ctx)
    return [vals[o] for o in g.outputs]


def _checked(n: Node, v: Any, ctx: Ctx) -> Any:
    if not isinstance(n.type, TensorType):
        return v
    v = round_to(np.asarray(v), n.type.dtype)
    expected = dims.bind_shape(n.type.shape, ctx.dims)
    assert v.shape == expected, f"oracle bug: {n.op.value} gave {v.shape}, type says {expected}"
    return v


def _np(fn: Callable[..., Any]) -> Rule:
    return lambda n, a, ctx: fn(*a)


def _shape(n: Node, ctx: Ctx, key: str = "shape") -> tuple[int, ...]:
    return dims.bind_shape(n.attrs[key], ctx.dims)


def _param(n: Node, a: list[Any], ctx: Ctx) -> np.ndarray:
    return ctx.params[n.attrs["name"]]


def _iota(n: Node, a: list[Any], ctx: Ctx) -> np.ndarray:
    shape = _shape(n, ctx)
    ax = n.attrs["axis"]
    line = np.arange(shape[ax]).reshape([-1 if k == ax else 1 for k in range(len(shape))])
    return np.broadcast_to(line, shape)


def _rand(n: Node, a: list[Any], ctx: Ctx) -> np.ndarray:
    shape = _shape(n, ctx)
    index = np.arange(math.prod(shape), dtype=np.int32).reshape(shape)
    steps = tuple(int(s) for s in a)
    return uniform(stream_seed(ctx.seed, n.attrs["stream"], steps), index)


def _erf(x: np.ndarray) -> np.ndarray:
    return np.vectorize(math.erf, otypes=[np.float64])(x)


def _reduce(fn: Callable[..., Any]) -> Rule:
    return lambda n, a, ctx: fn(a[0], axis=n.attrs["axes"], keepdims=n.attrs["keepdims"])


def _argmax(n: Node, a: list[Any], ctx: Ctx) -> np.ndarray:
    return np.argmax(a[0], axis=n.attrs["axes"][0], keepdims=n.attrs["keepdims"])


def _slice(n: Node, a: list[Any], ctx: Ctx) -> np.ndarray:
    stops = _shape(n, ctx, "stops")
    idx = tuple(slice(s, e, st) for s, e, st in zip(n.attrs["starts"], stops, n.attrs["steps"]))
    return a[0][idx]


def _gather(n: Node, a: list[Any], ctx: Ctx) -> np.ndarray:
    table, ids = a
    if ids.size and (ids.min() < 0 or ids.max() >= table.shape[0]):
        raise DSLError(out_of_range("gather", table.shape[0], ids.min(), ids.max()), n.loc)
    return table[ids]


def _index(n: Node, a: list[Any], ctx: Ctx) -> np.ndarray:
    x, k, axis = a[0], int(a[1]), n.attrs["axis"]
    if not 0 <= k < x.shape[axis]:  # a runtime index never counts from the end
        raise DSLError(out_of_range("index", x.shape[axis], k, k), n.loc)
    return np.take(x, k, axis=axis)


def _call(n: Node, a: list[Any], ctx: Ctx) -> tuple[Any, ...]:
    return tuple(run_graph(n.attrs["body"], a, ctx))


def _pad(n: Node, a: list[Any], ctx: Ctx) -> np.ndarray:
    x = a[0]
    for ax, (lo, hi, mid) in enumerate(zip(n.attrs["lows"], n.attrs["highs"],
                                           n.attrs["interiors"])):
        x = _pad_axis(x, ax, lo, hi, mid)
    return x


def _pad_axis(x: np.ndarray, ax: int, lo: int, hi: int, mid: int) -> np.ndarray:
    """Zeros between elements (mid), then at the ends; a negative end crops."""
    size = x.shape[ax]
    spread = size + mid * max(size - 1, 0)
    shape = list(x.shape)
    shape[ax] = spread + max(lo, 0) + max(hi, 0)
    out = np.zeros(shape, x.dtype)
    at = [slice(None)] * x.ndim
    at[ax] = slice(max(lo, 0), max(lo, 0) + spread, mid + 1)
    out[tuple(at)] = x
    at[ax] = slice(max(-lo, 0), shape[ax] - max(-hi, 0))
    return out[tuple(at)]


def _loop(n: Node, a: list[Any], ctx: Ctx) -> tuple[Any, ...]:
    """A scan: carries threaded through the steps, xs read and ys stacked per step."""
    k, nx = n.attrs["n_carry"], n.attrs.get("n_xs", 0)
    carry, xs, captured = list(a[:k]), a[k:k + nx], list(a[k + nx:])
    length = dims.bind(n.attrs["length"], ctx.dims)
    steps = range(length - 1, -1, -1) if n.attrs.get("reverse") else range(length)
    ys: list[list[Any]] = []
    for t in steps:
        outs = run_graph(n.attrs["body"], [np.int32(t), *carry, *(x[t] for x in xs), *captured],
                         ctx)
        carry = outs[:k]
        ys.append(outs[k:])
    if n.attrs.get("reverse"):
        ys.reverse()
    return (*carry, *_stack(n, ys, length, ctx))


def _stack(n: Node, ys: list[list[Any]], length: int, ctx: Ctx) -> list[np.ndarray]:
    body = n.attrs["body"]
    types = [body.nodes[o].tensor for o in body.outputs[n.attrs["n_carry"]:]]
    return [np.stack([step[j] for step in ys]) if length else
            np.zeros((0, *dims.bind_shape(t.shape, ctx.dims)), t.dtype.np)
            for j, t in enumerate(types)]


def _swap(x: np.ndarray) -> np.ndarray:
    return np.swapaxes(x, -1, -2)


def _attention(n: Node, a: list[Any], ctx: Ctx) -> tuple[np.ndarray, np.ndarray]:
    """The naive reference: the T x T logits, the softmax every builtin
    spells (max, sub, exp, sum, div), then p @ v; and log-sum-exp per row."""
    q, k, v, *captured = a
    (x,) = run_graph(n.attrs["body"], [q @ _swap(k), *captured], ctx)
    m = np.max(x, axis=-1, keepdims=True)
    e = np.exp(x - m)
    z = np.sum(e, axis=-1, keepdims=True)
    return (e / z) @ v, (m + np.log(z))[..., 0]


def _attention_grad(n: Node, a: list[Any], ctx: Ctx) -> tuple[np.ndarray, ...]:
    """The naive backward from the saved lse: p = exp(x - lse), dv = p^T do,
    dx = p (do v^T - delta), ds from the region, dq = ds k, dk = ds^T q."""
    q, k, v, do, lse, delta, *captured = a
    s = q @ _swap(k)
    x, _ = run_graph(n.attrs["body"], [s, np.zeros_like(s), *captured], ctx)
    p = np.exp(x - lse[..., None])
    dx = p * (do @ _swap(v) - delta[..., None])
    _, ds = run_graph(n.attrs["body"], [s, dx, *captured], ctx)
    return ds @ k, _swap(ds) @ q, _swap(p) @ do


def _foreach(n: Node, a: list[Any], ctx: Ctx) -> list[np.ndarray]:
    """The region once per group, on the group's whole arrays (its ops are
    elementwise, so the region at the group's shape is the same function)."""
    groups, arity = n.attrs["groups"], n.attrs["arity"]
    scalars = a[groups * arity:]
    out: list[np.ndarray] = []
    for k in range(groups):
        operands = a[k * arity:(k + 1) * arity]
        body = _at_shape(n.attrs["body"], arity, operands[0].shape)
        out += run_graph(body, [*operands, *scalars], ctx)
    if n.attrs.get("reduce"):  # each result summed over every group, group by group
        r = len(n.attrs["body"].outputs)
        return [sum((np.sum(v) for v in out[j::r]), np.zeros((), out[j].dtype))
                for j in range(r)]
    return out


def _at_shape(body: Graph, arity: int, shape: tuple[int, ...]) -> Graph:
    """A foreach region whose first `arity` inputs have this shape."""
    b = Builder(body.name)
    for k, m in enumerate(body.nodes):
        attrs = {**m.attrs, "shape": shape} if k in body.inputs[:arity] else m.attrs
        b.add(m.op, m.srcs, attrs, m.loc)
    return b.build(body.inputs, body.outputs, body.output_names)


eval_rules: dict[Op, Rule] = {
    Op.INPUT: lambda n, a, ctx: None,  # bound before the walk
    Op.PARAM: _param,
    Op.CONST: lambda n, a, ctx: np.array(n.attrs["value"], n.attrs["dtype"].np),
    Op.FULL: lambda n, a, ctx: np.full(_shape(n, ctx), n.attrs["value"], n.attrs["dtype"].np),
    Op.IOTA: _iota,
    Op.RAND: _rand,
    Op.DIM: lambda n, a, ctx: np.int32(dims.bind(n.attrs["dim"], ctx.dims)),
    Op.STOP_GRAD: _np(np.copy),
    Op.NEG: _np(np.negative), Op.EXP: _np(np.exp), Op.LOG: _np(np.log),
    Op.SQRT: _np(np.sqrt), Op.RSQRT: _np(lambda x: 1 / np.sqrt(x)), Op.ABS: _np(np.abs),
    Op.RELU: _np(lambda x: np.maximum(x, 0)),
    Op.SIGMOID: _np(lambda x: 1 / (1 + np.exp(-x))),
    Op.TANH: _np(np.tanh), Op.ERF: _np(_erf),
    Op.CAST: lambda n, a, ctx: a[0].astype(n.attrs["dtype"].np),
    Op.NOT: _np(np.logical_not),
    Op.ADD: _np(np.add), Op.SUB: _np(np.subtract), Op.MUL: _np(np.multiply),
    Op.DIV: _np(np.divide), Op.POW: _np(np.power), Op.MAXIMUM: _np(np.maximum),
    Op.MINIMUM: _np(np.minimum), Op.LT: _np(np.less), Op.LE: _np(np.less_equal),
    Op.GT: _np(np.greater), Op.GE: _np(np.greater_equal), Op.EQ: _np(np.equal),
    Op.NE: _np(np.not_equal), Op.AND: _np(np.logical_and), Op.OR: _np(np.logical_or),
    Op.WHERE: _np(np.where),
    Op.SUM: _reduce(np.sum), Op.MEAN: _reduce(np.mean), Op.MAX: _reduce(np.max),
    Op.MIN: _reduce(np.min), Op.ARGMAX: _argmax,
    Op.RESHAPE: lambda n, a, ctx: a[0].reshape(_shape(n, ctx)),
    Op.PERMUTE: lambda n, a, ctx: np.transpose(a[0], n.attrs["perm"]),
    Op.EXPAND: lambda n, a, ctx: np.broadcast_to(a[0], _shape(n, ctx)),
    Op.SLICE: _slice,
    Op.CONCAT: lambda n, a, ctx: np.concatenate(a, axis=n.attrs["axis"]),
    Op.INDEX: _index,
    Op.GATHER: _gather,
    Op.PAD: _pad,
    Op.FLIP: lambda n, a, ctx: np.flip(a[0], n.attrs["axes"]),
    Op.MATMUL: _np(np.matmul),
    Op.CONV2D: lambda n, a, ctx: conv2d(*a, **n.attrs),
    Op.MAX_POOL2D: lambda n, a, ctx: max_pool2d(a[0], **n.attrs),
    Op.AVG_POOL2D: lambda n, a, ctx: avg_pool2d(a[0], **n.attrs),
    Op.MAX_POOL2D_GRAD: lambda n, a, ctx: max_pool2d_grad(*a, **n.attrs),
    Op.ATTENTION: _attention, Op.ATTENTION_GRAD: _attention_grad,
    Op.CALL: _call, Op.LOOP: _loop, Op.FOREACH: _foreach,
    Op.GET: lambda n, a, ctx: a[0][n.attrs["index"]],
}

