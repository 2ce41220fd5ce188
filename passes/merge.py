"""merge_projections: several matmuls of one input by different weights become
one matmul by the weights laid side by side.

    q = x @ wq + bq;  k = x @ wk + bk;  v = x @ wv + bv
 -> qkv = x @ concat(wq, wk, wv) + concat(bq, bk, bv);  q, k, v = slices of qkv

One GEMM reads x once and runs 3x wider tiles (what GPT-2 does with its
c_attn weight); the concatenations are read in place by the matmul's
operand loads (each lane loads from one weight: codegen/writer.py _concat),
so no copy kernel is launched, and the slices are views its readers index.
Weights must be 2-D parameters of the same input width; biases are folded
in when every member adds a 1-D parameter bias and nothing else reads the
bare product. Autodiff sees ordinary concat/slice nodes.
"""

from __future__ import annotations

from dataclasses import dataclass

from ember.ir.graph import Builder, Graph
from ember.ir.ops import Op

from .rewrite import copy_node, map_bodies


@dataclass(frozen=True)
class Member:
    matmul: int
    weight: int
    bias: int | None      # the bias parameter, when folded
    out: int              # the node the slice replaces: the bias add, else the matmul


def merge_projections(g: Graph) -> Graph:
    g = map_bodies(g, merge_projections)
    groups = _groups(g)
    if not groups:
        return g
    first = {min(m.matmul for m in grp): grp for grp in groups}
    replaced = {i for grp in groups for m in grp for i in (m.matmul, m.out)}
    b = Builder(g.name)
    vals: dict[int, int] = {}
    for i, n in enumerate(g.nodes):
        if i in first:
            _emit(b, g, first[i], vals)
        if i in vals or i in replaced:
            continue
        vals[i] = copy_node(b, n, tuple(vals[s] for s in n.srcs))
    return b.build(tuple(vals[i] for i in g.inputs), tuple(vals[o] for o in g.outputs),
                   g.output_names)


def _groups(g: Graph) -> list[list[Member]]:
    users = g.users()
    out = []
    for x, us in enumerate(users):
        members = [u for u in dict.fromkeys(us) if _projection(g, u, x)]
        if len(members) < 2:
            continue
        widths = {g.nodes[g.nodes[m].srcs[1]].tensor.shape[0] for m in members}
        dtypes = {g.nodes[g.nodes[m].srcs[1]].tensor.dtype for m in members}
        if len(widths) == 1 and len(dtypes) == 1:
            out.append(_with_biases(g, users, members))
    return out


def _projection(g: Graph, u: int, x: int) -> bool:
    """Is node u `x @ w` with w a 2-D parameter (and x not w)?"""
    n = g.nodes[u]
    if n.op is not Op.MATMUL or n.srcs[0] != x or n.srcs[1] == x:
        return False
    w = g.nodes[n.srcs[1]]
    return w.op is Op.PARAM and w.tensor.rank == 2 and g.nodes[x].tensor.rank >= 2


def _with_biases(g: Graph, users: list[list[int]], matmuls: list[int]) -> list[Member]:
    biases = [_bias(g, users, m) for m in matmuls]
    if any(b is None for b in biases):
        return [Member(m, g.nodes[m].srcs[1], None, m) for m in matmuls]
    return [Member(m, g.nodes[m].srcs[1], bias, add)
            for m, (add, bias) in zip(matmuls, (b for b in biases if b is not None))]


def _bias(g: Graph, users: list[list[int]], m: int) -> tuple[int, int] | None:
    """(the add, its bias parameter) when m's only reader adds a 1-D
    parameter as wide as m's columns."""
    if len(users[m]) != 1 or m in g.outputs:
        return None
    add = g.nodes[users[m][0]]
    if add.op is not Op.ADD or add.tensor != g.nodes[m].tensor:
        return None
    other = add.srcs[1] if add.srcs[0] == m else add.srcs[0]
    b = g.nodes[other]
    width = g.nodes[m].tensor.shape[-1]
    ok = b.op is Op.PARAM and b.tensor.shape == (width,) and other != m
    return (users[m][0], other) if ok else None


def _emit(b: Builder, g: Graph, members: list[Member], vals: dict[int, int]) -> None:
    """The merged projection, then each member's slice in place of its result."""
    n0 = g.nodes[members[0].matmul]
    for m in members:   # parameters are leaves: copy them here, before their first use
        for p in (m.weight, m.bias):
            if p is not None and p not in vals:
                vals[p] = copy_node(b, g.nodes[p], ())
    x = vals[n0.srcs[0]]
    w = b.add(Op.CONCAT, tuple(vals[m.weight] for m in members), {"axis": 1}, n0.loc)
    y = b.add(Op.MATMUL, (x, w), {}, n0.loc)
    if members[0].bias is not None:
        bias = b.add(Op.CONCAT, tuple(vals[m.bias] for m in members if m.bias is not None),
                     {"axis": 0}, n0.loc)
        y = b.add(Op.ADD, (y, bias), {}, n0.loc)
    shape = b.type_of(y).shape
    start = 0
    for m in members:
        width = g.nodes[m.weight].tensor.shape[1]
        attrs = {"starts": (0,) * (len(shape) - 1) + (start,),
                 "stops": tuple(shape[:-1]) + (start + width,),
                 "steps": (1,) * len(shape)}
        vals[m.out] = b.add(Op.SLICE, (y,), attrs, g.nodes[m.out].loc)
        start += width
