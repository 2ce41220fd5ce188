"""Backpropagation through time: the VJP of a scan (LOOP).

The forward scan is copied with extra per-step outputs, its *residuals*. The
rematerialization policy: save what is expensive to recompute, the carries
each step starts from and the results of its matmul and conv nodes; recompute
everything else (elementwise chains such as an LSTM's gate activations) in
the backward step from those.

The backward pass is a reversed scan over the same steps, whose body still
sees the forward index t (so `x[:, t, :]` and dropout masks are the same):
it carries the cotangents of the forward carries, takes the residuals, the
cotangents of the per-step outputs and the forward xs as its own xs,
recomputes the forward step and backpropagates through it. A captured value's
(a weight's) gradient that is a matmul `A^T @ D` of per-step values is not
accumulated step by step: A and D leave the loop stacked and are multiplied
once afterwards, one GEMM over all steps (cuDNN's dW_hh = sum_t h_{t-1}^T
dgates_t as a single [H, T*B] x [T*B, 4H] matmul). Other contributions are
summed in extra carries.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ember.ir import dims
from ember.ir.dtypes import DType
from ember.ir.graph import Builder, Graph, Node, TensorType
from ember.ir.ops import Op

from .vjp import Ct, Emit

SAVED_OPS = frozenset({Op.MATMUL, Op.CONV2D})


def scan_is_active(n: Node, src_active: Sequence[bool]) -> bool:
    return any(src_active)


def body_activity(n: Node, src_active: Sequence[bool]) -> set[int]:
    """Active nodes of a scan's body: a carry becomes active once any step
    makes it depend on an active value, so iterate to a fixed point."""
    from .grad import activity
    body, k = n.attrs["body"], n.attrs["n_carry"]
    seeds = {body.inputs[1 + j] for j, a in enumerate(src_active) if a}
    while True:
        act = activity(body, seeds)
        grow = {body.inputs[1 + j] for j in range(k) if body.outputs[j] in act} - seeds
        if not grow:
            return act
        seeds |= grow


def residuals(n: Node, act: set[int]) -> list[int]:
    """Body nodes the forward scan saves per step: every carry it starts from,
    and its active matmul and conv results, each taken after the additions
    that only it feeds (an LSTM saves its gates' pre-activation sum, the tensor
    its nonlinearities read, which the gates kernel computes anyway)."""
    body, k = n.attrs["body"], n.attrs["n_carry"]
    users = body.users()
    saved = [_after_sums(body, users, i) for i, m in enumerate(body.nodes)
             if m.op in SAVED_OPS and i in act]
    return list(body.inputs[1:1 + k]) + list(dict.fromkeys(saved))


def _after_sums(body: Graph, users: list[list[int]], i: int) -> int:
    shape = body[i].tensor.shape
    while (len(users[i]) == 1 and body[users[i][0]].op is Op.ADD
           and body[users[i][0]].tensor.shape == shape and i not in body.outputs):
        i = users[i][0]
    return i


def save_residuals(b: Builder, n: Node, srcs: tuple[int, ...], src_active: Sequence[bool]) -> int:
    """The forward scan, with its residuals as extra per-step outputs."""
    body: Graph = n.attrs["body"]
    keep = residuals(n, body_activity(n, src_active))
    aug = Graph(body.name, body.nodes, body.inputs, body.outputs + tuple(keep),
                body.output_names + tuple(f"saved{i}" for i in keep))
    return b.add(Op.LOOP, srcs, {**n.attrs, "body": aug}, n.loc)


@dataclass
class _Backward:
    """The backward body under construction, with its inputs in their groups."""

    bb: Builder
    carries: list[int] = field(default_factory=list)
    xs: list[int] = field(default_factory=list)
    captured: list[int] = field(default_factory=list)

    def input(self, group: list[int], name: str, t: TensorType) -> int:
        i = self.bb.add(Op.INPUT, (), {"name": name, "shape": t.shape, "dtype": t.dtype})
        group.append(i)
        return i


def scan_vjp(b: Builder, n: Node, fwd: int, srcs: list[int], out_cts: dict[int, int],
             src_active: Sequence[bool]) -> list[Ct]:
    """Cotangents of a scan's srcs, given those of its results (by index)."""
    from .grad import backprop, copy_forward, total
    body: Graph = n.attrs["body"]
    k, nx = n.attrs["n_carry"], n.attrs.get("n_xs", 0)
    act = body_activity(n, src_active)
    keep = residuals(n, act)
    carry_in, x_in = body.inputs[1:1 + k], body.inputs[1 + k:1 + k + nx]
    cap_in = body.inputs[1 + k + nx:]
    name = _namer(body)
    bw = _Backward(Builder(f"{body.name}_grad"))
    t = bw.input([], "t", TensorType((), DType.I32))
    act_carry = [j for j in range(k) if carry_in[j] in act]
    dcar = [bw.input(bw.carries, f"d_{name(carry_in[j])}", body[carry_in[j]].tensor)
            for j in act_carry]
    res = {i: bw.input(bw.xs, f"saved_{name(i)}", body[i].tensor) for i in keep}
    ys_ct = [j for j in range(len(body.outputs) - k) if k + j in out_cts]
    dys = [bw.input(bw.xs, f"d_{body.output_names[k + j]}", body[body.outputs[k + j]].tensor)
           for j in ys_ct]
    xin = [bw.input(bw.xs, name(x), body[x].tensor) for x in x_in]
    caps = [bw.input(bw.captured, name(c), body[c].tensor) for c in cap_in]
    given = {body.inputs[0]: t, **dict(zip(x_in, xin)), **dict(zip(cap_in, caps)), **res}
    vals = copy_forward(bw.bb, body, act, given)
    seeds: dict[int, list[int]] = {}
    for j, d in [*zip(act_carry, dcar), *((k + j, d) for j, d in zip(ys_ct, dys))]:
        seeds.setdefault(body.outputs[j], []).append(d)
    cts = backprop(bw.bb, body, vals, seeds, act)

    e = Emit(bw.bb, n.loc)
    outs = [total(e, cts.get(carry_in[j], []), body[carry_in[j]]) for j in act_carry]
    stacked = {**{res[i]: ("res", m) for m, i in enumerate(keep)},
               **{x: ("x", m) for m, x in enumerate(xin)}}
    plan = _CapturedPlan(bw.bb, t, caps, [c in act for c in cap_in],
                         [cts.get(c, []) for c in cap_in], stacked)
    acc_in = [bw.input(bw.carries, f"acc_{name(cap_in[j])}", body[cap_in[j]].tensor)
              for j in plan.accumulated]
    outs += [e(Op.ADD, a, total(e, plan.others[j], body[cap_in[j]]))
             for a, j in zip(acc_in, plan.accumulated)]
    act_xs = [j for j, x in enumerate(x_in) if x in act]
    dxs = [total(e, cts.get(x_in[j], []), body[x_in[j]]) for j in act_xs]
    stacked_ys = list(dict.fromkeys(dxs + plan.stacked_outputs))  # each value stacked once
    outs += stacked_ys
    names = [f"out{m}" for m in range(len(outs))]
    graph = bw.bb.build((t, *bw.carries, *bw.xs, *bw.captured), tuple(outs), tuple(names))

    oe = Emit(b, n.loc)
    n_res = len(body.outputs)
    init = [out_cts.get(j) or oe.zeros(body[carry_in[j]].tensor) for j in act_carry]
    init += [oe.zeros(body[cap_in[j]].tensor) for j in plan.accumulated]
    xs = [oe(Op.GET, fwd, index=n_res + m) for m in range(len(keep))]
    xs += [out_cts[k + j] for j in ys_ct] + list(srcs[k:k + nx])
    loop = b.add(Op.LOOP, (*init, *xs, *srcs[k + nx:]),
                 {"length": n.attrs["length"], "n_carry": len(init), "n_xs": len(xs),
                  "reverse": not n.attrs.get("reverse", False), "body": graph}, n.loc)
    result = [oe(Op.GET, loop, index=m) for m in range(len(outs))]
    src_cts: list[Ct] = [None] * len(srcs)
    for m, j in enumerate(act_carry):
        src_cts[j] = result[m]
    for m, j in enumerate(plan.accumulated):
        src_cts[k + nx + j] = result[len(act_carry) + m]
    at = len(act_carry) + len(plan.accumulated)
    for j, dx in zip(act_xs, dxs):
        src_cts[k + j] = result[at + stacked_ys.index(dx)]
    ys = [result[at + stacked_ys.index(y)] for y in plan.stacked_outputs]
    stacks = _Stacks(oe, ys, xs, list(srcs[k:k + nx]), list(srcs[k + nx:]))
    for j, terms in plan.after.items():
        for term in terms:
            ct = stacks.term(term)
            prev = src_cts[k + nx + j]
            src_cts[k + nx + j] = ct if prev is None else oe(Op.ADD, prev, ct)
    return src_cts


def _namer(body: Graph) -> Callable[[int], str]:
    return lambda i: str(body[i].attrs.get("name", f"v{i}"))


# A reference to a stacked per-step value [length, ...]: ("res", m) the forward
# scan's residual m, ("x", m) its xs m, ("y", m) the backward scan's extra
# output m, ("cap", j, axis) captured value j indexed by t along `axis`.
Ref = tuple[Any, ...]
# After-loop terms: ("gemm", A, D) = sum_t A_t^T @ D_t; ("sum", D, axes, shape)
# = sum_t sum(D_t, axes) reshaped to `shape`.
Term = tuple[Any, ...]


class _CapturedPlan:
    """How each captured value's gradient leaves the backward scan: terms
    computed once after the loop from stacked per-step values (GEMMs over all
    steps; sums of values that are stacked anyway), or summed in a carry."""

    def __init__(self, bb: Builder, t: int, caps: list[int], active: list[bool],
                 parts: list[list[int]], stacked: dict[int, Ref]) -> None:
        self.bb, self.t, self.caps = bb, t, caps
        self.stacked = dict(stacked)
        self.stacked_outputs: list[int] = []
        self.after: dict[int, list[Term]] = {}
        self.others: dict[int, list[int]] = {}
        gemm_free = [[p for p in ps if not self._gemm(j, p)] if a else []
                     for j, (ps, a) in enumerate(zip(parts, active))]
        for j, ps in enumerate(gemm_free):
            rest = [p for p in ps if not self._sum(j, p)]
            if rest:
                self.others[j] = rest
        self.accumulated = sorted(self.others)

    def _gemm(self, j: int, p: int) -> bool:
        pair = _transposed_matmul(self.bb, p)
        if pair is not None:
            self.after.setdefault(j, []).append(("gemm", self._ref(pair[0]), self._ref(pair[1])))
        return pair is not None

    def _sum(self, j: int, p: int) -> bool:
        """A sum over per-step axes of a value stacked anyway (a bias gradient)."""
        shape = self.bb.type_of(p).shape
        if self.bb.nodes[p].op is Op.RESHAPE:
            p = self.bb.nodes[p].srcs[0]
        n = self.bb.nodes[p]
        if n.op is not Op.SUM or n.attrs["keepdims"] or n.srcs[0] not in self.stacked:
            return False
        self.after.setdefault(j, []).append(("sum", self.stacked[n.srcs[0]], n.attrs["axes"],
                                             shape))
        return True

    def _ref(self, i: int) -> Ref:
        if i not in self.stacked:
            n = self.bb.nodes[i]
            if n.op is Op.INDEX and n.srcs[1] == self.t and n.srcs[0] in self.caps:
                self.stacked[i] = ("cap", self.caps.index(n.srcs[0]), n.attrs["axis"])
            else:
                self.stacked_outputs.append(i)
                self.stacked[i] = ("y", len(self.stacked_outputs) - 1)
        return self.stacked[i]


def _transposed_matmul(bb: Builder, p: int) -> tuple[int, int] | None:
    """(A, D) if node p is `permute(A, (1, 0)) @ D` with A, D of rank 2."""
    m = bb.nodes[p]
    if m.op is not Op.MATMUL:
        return None
    at, d = m.srcs
    if bb.nodes[at].op is not Op.PERMUTE or bb.nodes[at].attrs["perm"] != (1, 0):
        return None
    a = bb.nodes[at].srcs[0]
    return (a, d) if len(bb.type_of(d).shape) == 2 else None


@dataclass
class _Stacks:
    """Resolves references to stacked values after the backward scan."""

    e: Emit
    ys: list[int]          # the backward scan's extra outputs
    res: list[int]         # the forward scan's residuals
    xs: list[int]          # the forward scan's xs
    caps: list[int]        # the forward scan's captured values

    def get(self, ref: Ref) -> int:
        kind, m = ref[0], ref[1]
        if kind == "cap":  # x[:, t, :] over all t is x with that axis first: a view
            rank = len(self.e.shape(self.caps[m]))
            return self.e.permute(self.caps[m], (ref[2], *(a for a in range(rank)
                                                          if a != ref[2])))
        return {"res": self.res, "x": self.xs, "y": self.ys}[kind][m]

    def term(self, term: Term) -> int:
        if term[0] == "gemm":
            return _gemm_over_steps(self.e, self.get(term[1]), self.get(term[2]))
        _, ref, axes, shape = term
        total = self.e(Op.SUM, self.get(ref), axes=(0, *(a + 1 for a in axes)), keepdims=False)
        return self.e.reshape(total, shape)


def _gemm_over_steps(e: Emit, stack_a: int, stack_d: int) -> int:
    """sum_t A_t^T @ D_t as one matmul: [K, T*B] @ [T*B, N]."""
    (length, rows, k), n = e.shape(stack_a), e.shape(stack_d)[-1]
    flat = dims.mul(length, rows)
    a = e.permute(e.reshape(stack_a, (flat, k)), (1, 0))
    return e(Op.MATMUL, a, e.reshape(stack_d, (flat, n)))
