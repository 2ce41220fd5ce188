"""A second interpreter of the Ember IR, written with torch ops: a third opinion.

`evaluate_torch(graph, inputs, params)` runs a graph node by node like the NumPy
oracle (runtime/oracle.py), but every rule here is written from the op's meaning
(ir/ops.py, ir/shapes.py) with torch, sharing no code with the oracle's rules. Only
RAND reuses `ember.runtime.rand`, which *defines* the random stream. The fuzzer
compares the two; gradient tests differentiate through this one, so float values
are built with out-of-place torch ops only (no NumPy round trips): pass float64
tensors with `requires_grad=True` and call `torch.autograd.grad` on the outputs.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ember.ir import dims
from ember.ir.dtypes import DType
from ember.ir.graph import Graph, Node, TensorType
from ember.ir.loc import DSLError
from ember.ir.ops import Op
from ember.runtime.rand import stream_seed, uniform

TORCH_DTYPE = {DType.F32: torch.float32, DType.F64: torch.float64, DType.I32: torch.int32,
               DType.I64: torch.int64, DType.BOOL: torch.bool}


@dataclass
class Ctx:
    """What a rule may need besides its operands: bound dims, parameters, the seed."""

    dims: dict[str, int]
    params: dict[str, torch.Tensor]
    seed: int


TorchRule = Callable[[Node, list[Any], Ctx], Any]
Value = np.ndarray | torch.Tensor


def evaluate_torch(g: Graph, inputs: Mapping[str, Value], params: Mapping[str, Value],
                   seed: int = 0, env: Mapping[str, int] | None = None) -> list[torch.Tensor]:
    """Run g with torch on named inputs (arrays or tensors); return its outputs in order."""
    ctx = Ctx(dict(env or {}), {k: torch.as_tensor(v) for k, v in params.items()}, seed)
    args = [torch.as_tensor(inputs[g.nodes[i].attrs["name"]]) for i in g.inputs]
    for i, a in zip(g.inputs, args):
        _bind(g.nodes[i].tensor, tuple(a.shape), ctx.dims)
    return _run(g, args, ctx)


def _bind(t: TensorType, shape: tuple[int, ...], env: dict[str, int]) -> None:
    """Learn the symbols of a declared shape from an actual one (one unknown per dim)."""
    for d, actual in zip(t.shape, shape, strict=True):
        coef, syms = dims.factors(d)
        unbound = [s for s in syms if s not in env]
        if len(unbound) == 1:
            known = coef * math.prod(env[s] for s in syms if s in env)
            env[unbound[0]] = actual // known


def _run(g: Graph, args: list[Any], ctx: Ctx) -> list[Any]:
    vals: list[Any] = [None] * len(g.nodes)
    for i, a in zip(g.inputs, args):
        vals[i] = a
    for i, n in enumerate(g.nodes):
        if vals[i] is None:
            vals[i] = _typed(n, torch_rules[n.op](n, [vals[s] for s in n.srcs], ctx), ctx)
    return [vals[o] for o in g.outputs]


def _typed(n: Node, v: Any, ctx: Ctx) -> Any:
    """Cast to the node's dtype (torch widens integer sums) and check the shape."""
    if not isinstance(n.type, TensorType):
        return v
    v = v.to(TORCH_DTYPE[n.type.dtype])
    expected = dims.bind_shape(n.type.shape, ctx.dims)
    assert tuple(v.shape) == expected, f"torch_ir: {n.op.value} gave {tuple(v.shape)}, " \
                                       f"type says {expected}"
    return v


def _shape(n: Node, ctx: Ctx, key: str = "shape") -> tuple[int, ...]:
    return dims.bind_shape(n.attrs[key], ctx.dims)


def _dtype(n: Node) -> torch.dtype:
    return TORCH_DTYPE[n.attrs["dtype"]]


def _t(fn: Callable[..., torch.Tensor]) -> TorchRule:
    return lambda n, a, ctx: fn(*a)


def _iota(n: Node, a: list[Any], ctx: Ctx) -> torch.Tensor:
    shape, ax = _shape(n, ctx), n.attrs["axis"]
    line = torch.arange(shape[ax], dtype=_dtype(n))
    return line.reshape([-1 if k == ax else 1 for k in range(len(shape))]).expand(shape)


def _rand(n: Node, a: list[Any], ctx: Ctx) -> torch.Tensor:
    shape = _shape(n, ctx)
    flat = np.arange(math.prod(shape), dtype=np.int32).reshape(shape)
    key = stream_seed(ctx.seed, n.attrs["stream"], tuple(int(s) for s in a))
    return torch.from_numpy(np.asarray(uniform(key, flat)))  # (a 0-d draw is a NumPy scalar)


def _reduce(fn: Callable[..., torch.Tensor]) -> TorchRule:
    def rule(n: Node, a: list[Any], ctx: Ctx) -> torch.Tensor:
        # torch reads dim=() as "every axis"; in the IR it reduces none
        if not n.attrs["axes"]:
            return a[0]
        return fn(a[0], dim=n.attrs["axes"], keepdim=n.attrs["keepdims"])
    return rule


def _argmax(n: Node, a: list[Any], ctx: Ctx) -> torch.Tensor:
    return torch.argmax(a[0], dim=n.attrs["axes"][0], keepdim=n.attrs["keepdims"])


def _slice(n: Node, a: list[Any], ctx: Ctx) -> torch.Tensor:
    stops = _shape(n, ctx, "stops")
    idx = tuple(slice(s, e, st) for s, e, st in zip(n.attrs["starts"], stops, n.attrs["steps"]))
    return a[0][idx]


def _gather(n: Node, a: list[Any], ctx: Ctx) -> torch.Tensor:
    table, ids = a
    rows = table.shape[0]
    if ids.numel() and bool(((ids < 0) | (ids >= rows)).any()):
        raise DSLError(f"embedding ids must be in [0, {rows}), found values in "
                       f"[{int(ids.min())}, {int(ids.max())}]", n.loc)
    return table[ids.long()]


def _conv2d(n: Node, a: list[Any], ctx: Ctx) -> torch.Tensor:
    at = n.attrs
    return F.conv2d(a[0], a[1], stride=at["stride"], padding=at["padding"],
                    dilation=at["dilation"], groups=at["groups"])


def _pool(fn: Callable[..., torch.Tensor], **kw: Any) -> TorchRule:
    return lambda n, a, ctx: fn(a[0], n.attrs["kernel"], n.attrs["stride"],
                                n.attrs["padding"], **kw)


def _call(n: Node, a: list[Any], ctx: Ctx) -> tuple[Any, ...]:
    return tuple(_run(n.attrs["body"], a, ctx))


def _pad(n: Node, a: list[Any], ctx: Ctx) -> torch.Tensor:
    x = a[0]
    for ax, widths in enumerate(zip(n.attrs["lows"], n.attrs["highs"], n.attrs["interiors"])):
        x = _pad_axis(x, ax, *widths)
    return x


def _pad_axis(x: torch.Tensor, ax: int, lo: int, hi: int, mid: int) -> torch.Tensor:
    """Interleave `mid` zeros after each element (dropping the trailing ones), add
    zeros at the ends, then crop the negative ends: all out of place."""
    size = x.shape[ax]
    if mid:
        z = x.unsqueeze(ax + 1)
        gaps = torch.zeros_like(z).expand(*z.shape[:ax + 1], mid, *z.shape[ax + 2:])
        x = torch.cat([z, gaps], ax + 1).flatten(ax, ax + 1)
        x = x.narrow(ax, 0, size + mid * max(size - 1, 0))
    shape = list(x.shape)
    ends = []
    for width in (max(lo, 0), max(hi, 0)):
        shape[ax] = width
        ends.append(torch.zeros(shape, dtype=x.dtype))
    x = torch.cat([ends[0], x, ends[1]], ax)
    return x.narrow(ax, max(-lo, 0), x.shape[ax] - max(-lo, 0) - max(-hi, 0))


def _pool_grad(n: Node, a: list[Any], ctx: Ctx) -> torch.Tensor:
    """Each window's gradient goes to the input torch's max_pool2d picked."""
    x, dy = a
    at = n.attrs
    _, picked = F.max_pool2d(x, at["kernel"], at["stride"], at["padding"], return_indices=True)
    flat = torch.zeros(*x.shape[:2], x.shape[2] * x.shape[3], dtype=dy.dtype)
    flat = flat.scatter_add(2, picked.flatten(2), dy.flatten(2))
    return flat.reshape(x.shape)


def _foreach(n: Node, a: list[Any], ctx: Ctx) -> tuple[Any, ...]:
    """The scalar region vmapped over each group's elements (the oracle instead
    evaluates it on whole arrays), summed over everything when reduce=True."""
    groups, arity, body = n.attrs["groups"], n.attrs["arity"], n.attrs["body"]
    scalars = a[groups * arity:]
    per_element = torch.vmap(lambda *xs: tuple(_run(body, [*xs, *scalars], ctx)))
    out: list[Any] = []
    for k in range(groups):
        operands = a[k * arity:(k + 1) * arity]
        results = per_element(*(x.reshape(-1) for x in operands))
        out += [r.reshape(operands[0].shape) for r in results]
    if n.attrs.get("reduce"):
        r = len(body.outputs)
        return tuple(sum(v.sum() for v in out[j::r]) for j in range(r))
    return tuple(out)


def _loop(n: Node, a: list[Any], ctx: Ctx) -> tuple[Any, ...]:
    """A scan: carries threaded through the steps; xs read and ys stacked per step."""
    k, nx = n.attrs["n_carry"], n.attrs.get("n_xs", 0)
    carry, xs, captured = list(a[:k]), a[k:k + nx], list(a[k + nx:])
    length = dims.bind(n.attrs["length"], ctx.dims)
    steps = range(length)
    if n.attrs.get("reverse"):
        steps = steps[::-1]
    ys: dict[int, list[Any]] = {}
    for step in steps:
        counter = torch.tensor(step, dtype=torch.int32)
        outs = _run(n.attrs["body"], [counter, *carry, *(x[step] for x in xs), *captured], ctx)
        carry, ys[step] = outs[:k], outs[k:]
    return (*carry, *_stacked(n, [ys[t] for t in range(length)], ctx))


def _stacked(n: Node, ys: list[list[Any]], ctx: Ctx) -> list[torch.Tensor]:
    body = n.attrs["body"]
    types = [body.nodes[o].tensor for o in body.outputs[n.attrs["n_carry"]:]]
    if ys:
        return [torch.stack([step[j] for step in ys]) for j in range(len(types))]
    return [torch.zeros((0, *dims.bind_shape(t.shape, ctx.dims)), dtype=TORCH_DTYPE[t.dtype])
            for t in types]


def _attention(n: Node, a: list[Any], ctx: Ctx) -> tuple[torch.Tensor, torch.Tensor]:
    """softmax(logits) @ v and logsumexp(logits), the logits from the region."""
    q, k, v, *captured = a
    (x,) = _run(n.attrs["body"], [q @ k.transpose(-1, -2), *captured], ctx)
    return torch.softmax(x, dim=-1) @ v, torch.logsumexp(x, dim=-1)


def _attention_grad(n: Node, a: list[Any], ctx: Ctx) -> tuple[torch.Tensor, ...]:
    """From the saved lse and delta; the region's logits differentiated by
    torch.autograd (its second result, our own derivative, is not used)."""
    q, k, v, do, lse, delta, *captured = a
    with torch.enable_grad():
        s = (q @ k.transpose(-1, -2)).detach().requires_grad_(True)
        x, _ = _run(n.attrs["body"], [s, torch.zeros_like(s), *captured], ctx)
        p = torch.exp(x.detach() - lse[..., None])
        dx = p * (do @ v.transpose(-1, -2) - delta[..., None])
        (ds,) = torch.autograd.grad(x, s, dx)
    return ds @ k, ds.transpose(-1, -2) @ q, p.transpose(-1, -2) @ do


torch_rules: dict[Op, TorchRule] = {
    Op.INPUT: lambda n, a, ctx: None,  # bound before the walk
    Op.PARAM: lambda n, a, ctx: ctx.params[n.attrs["name"]],
    Op.CONST: lambda n, a, ctx: torch.tensor(n.attrs["value"], dtype=_dtype(n)),
    Op.FULL: lambda n, a, ctx: torch.full(_shape(n, ctx), n.attrs["value"], dtype=_dtype(n)),
    Op.IOTA: _iota,
    Op.RAND: _rand,
    Op.DIM: lambda n, a, ctx: torch.tensor(dims.bind(n.attrs["dim"], ctx.dims), dtype=torch.int32),
    Op.STOP_GRAD: lambda n, a, ctx: a[0].detach(),
    Op.NEG: _t(torch.neg), Op.EXP: _t(torch.exp), Op.LOG: _t(torch.log),
    Op.SQRT: _t(torch.sqrt), Op.RSQRT: _t(torch.rsqrt), Op.ABS: _t(torch.abs),
    Op.RELU: _t(torch.relu), Op.SIGMOID: _t(torch.sigmoid), Op.TANH: _t(torch.tanh),
    Op.ERF: _t(torch.erf),
    Op.CAST: lambda n, a, ctx: a[0].to(_dtype(n)),
    Op.NOT: _t(torch.logical_not),
    Op.ADD: _t(torch.add), Op.SUB: _t(torch.sub), Op.MUL: _t(torch.mul),
    Op.DIV: _t(torch.div), Op.POW: _t(torch.pow), Op.MAXIMUM: _t(torch.maximum),
    Op.MINIMUM: _t(torch.minimum), Op.LT: _t(torch.lt), Op.LE: _t(torch.le),
    Op.GT: _t(torch.gt), Op.GE: _t(torch.ge), Op.EQ: _t(torch.eq), Op.NE: _t(torch.ne),
    Op.AND: _t(torch.logical_and), Op.OR: _t(torch.logical_or),
    Op.WHERE: _t(torch.where),
    Op.SUM: _reduce(torch.sum), Op.MEAN: _reduce(torch.mean), Op.MAX: _reduce(torch.amax),
    Op.MIN: _reduce(torch.amin), Op.ARGMAX: _argmax,
    Op.RESHAPE: lambda n, a, ctx: a[0].reshape(_shape(n, ctx)),
    Op.PERMUTE: lambda n, a, ctx: a[0].permute(n.attrs["perm"]),
    Op.EXPAND: lambda n, a, ctx: a[0].expand(_shape(n, ctx)),
    Op.SLICE: _slice,
    Op.CONCAT: lambda n, a, ctx: torch.cat(a, dim=n.attrs["axis"]),
    Op.INDEX: lambda n, a, ctx: a[0].select(n.attrs["axis"], int(a[1])),
    Op.GATHER: _gather,
    Op.PAD: _pad,
    Op.FLIP: lambda n, a, ctx: torch.flip(a[0], n.attrs["axes"]),
    Op.MATMUL: _t(torch.matmul),
    Op.CONV2D: _conv2d,
    Op.MAX_POOL2D: _pool(F.max_pool2d),
    Op.AVG_POOL2D: _pool(F.avg_pool2d, count_include_pad=True),
    Op.MAX_POOL2D_GRAD: _pool_grad,
    Op.ATTENTION: _attention, Op.ATTENTION_GRAD: _attention_grad,
    Op.CALL: _call, Op.LOOP: _loop, Op.FOREACH: _foreach,
    Op.GET: lambda n, a, ctx: a[0][n.attrs["index"]],
}
