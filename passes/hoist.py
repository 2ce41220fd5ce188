"""hoist: per-step matmuls of a scan's input become one GEMM before the loop.

A scan body's `x[:, t, :] @ w`, with x and w captured (the same every step)
and t the step counter, is computed for all steps at once before the loop,
`moveaxis(x, 1, 0) @ w` stacked [length, ...], and read by the body as a
per-step input (xs). An LSTM's input projection becomes one [T*B, n_in] x
[n_in, 4H] matmul off the recurrence's critical path, and its gradient one
GEMM after the backward scan (the cuDNN layout).
"""

from __future__ import annotations

from dataclasses import replace

from ember.ir.graph import Builder, Graph, Node
from ember.ir.ops import Op

from .rewrite import copy_node, map_bodies, map_graph


def hoist(g: Graph) -> Graph:
    """Every scan with hoistable input matmuls, rewritten (bodies first)."""
    def visit(b: Builder, n: Node, srcs: tuple[int, ...]) -> int:
        if n.op is Op.LOOP:
            for m in _hoistable(n):
                n, srcs = _hoist_one(b, n, srcs, m)
        return copy_node(b, n, srcs)
    return map_graph(map_bodies(g, hoist), visit)


def _hoistable(n: Node) -> list[int]:
    """Body matmuls `index(x, t) @ w` with x and w captured and x's indexed
    axis as long as the loop."""
    body: Graph = n.attrs["body"]
    k, nx = n.attrs["n_carry"], n.attrs.get("n_xs", 0)
    captured = set(body.inputs[1 + k + nx:])
    found = []
    for i, m in enumerate(body.nodes):
        if m.op is not Op.MATMUL or m.srcs[1] not in captured:
            continue
        a = body[m.srcs[0]]
        if (a.op is Op.INDEX and a.srcs[1] == body.inputs[0] and a.srcs[0] in captured
                and body[a.srcs[0]].tensor.shape[a.attrs["axis"]] == n.attrs["length"]
                and body[m.srcs[1]].tensor.rank == 2):
            found.append(i)
    return found


def _hoist_one(b: Builder, n: Node, srcs: tuple[int, ...], m: int) -> tuple[Node, tuple[int, ...]]:
    body: Graph = n.attrs["body"]
    k, nx = n.attrs["n_carry"], n.attrs.get("n_xs", 0)
    mm = body[m]
    index = body[mm.srcs[0]]
    outer = {bi: s for bi, s in zip(body.inputs[1:], srcs)}
    x, axis = outer[index.srcs[0]], index.attrs["axis"]
    rank = b.type_of(x).rank
    first = b.add(Op.PERMUTE, (x,), {"perm": (axis, *(a for a in range(rank) if a != axis))},
                  mm.loc)
    stacked = b.add(Op.MATMUL, (first, outer[mm.srcs[1]]), {}, mm.loc)
    nb = Builder(body.name)
    remap: dict[int, int] = {}
    for i, node in enumerate(body.nodes):
        if i == m:
            remap[i] = nb.add(Op.INPUT, (), {"name": f"hoisted{m}", "shape": node.tensor.shape,
                                             "dtype": node.tensor.dtype}, node.loc)
        else:
            remap[i] = copy_node(nb, node, tuple(remap[s] for s in node.srcs))
    ins = [remap[i] for i in body.inputs]
    ins.insert(1 + k + nx, remap[m])
    new_body = nb.build(tuple(ins), tuple(remap[o] for o in body.outputs), body.output_names)
    new_srcs = (*srcs[:k + nx], stacked, *srcs[k + nx:])
    attrs = {**n.attrs, "body": new_body, "n_xs": nx + 1}
    return replace(n, attrs=attrs), new_srcs
