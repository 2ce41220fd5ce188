"""cse and dce: remove repeated and unused computation.

CSE keys a node by (op, srcs, attrs); leaves that read state (INPUT) or draw
random numbers per stream are keyed by name so two reads of one parameter
merge but two dropout masks never do. Regions are never merged. DCE keeps
inputs and everything an output depends on.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from ember.ir.graph import Builder, Graph, Node
from ember.ir.ops import Op

from .rewrite import copy_node, map_bodies, map_graph


def _key(n: Node, srcs: tuple[int, ...]) -> Any:
    if n.op is Op.INPUT or "body" in n.attrs:
        return None
    return (n.op, srcs, tuple(sorted((k, repr(v)) for k, v in n.attrs.items())))


def cse(g: Graph) -> Graph:
    """Merge nodes that compute the same value."""
    seen: dict[Any, int] = {}

    def visit(b: Builder, n: Node, srcs: tuple[int, ...]) -> int:
        key = _key(n, srcs)
        if key is not None and key in seen:
            return seen[key]
        new = copy_node(b, n, srcs)
        if key is not None:
            seen[key] = new
        return new
    return map_graph(map_bodies(g, cse), visit)


def dce(g: Graph) -> Graph:
    """Drop nodes no output depends on (inputs always stay), and the per-step
    inputs and captured values a scan's body no longer reads."""
    g = map_graph(map_bodies(g, dce), _drop_unread_inputs)
    live = set(g.outputs) | set(g.inputs)
    for i in reversed(range(len(g.nodes))):
        if i in live:
            live.update(g.nodes[i].srcs)
    b = Builder(g.name)
    remap: dict[int, int] = {}
    for i, n in enumerate(g.nodes):
        if i in live:
            remap[i] = copy_node(b, n, tuple(remap[s] for s in n.srcs))
    return b.build(tuple(remap[i] for i in g.inputs), tuple(remap[o] for o in g.outputs),
                   g.output_names)


def _drop_unread_inputs(b: Builder, n: Node, srcs: tuple[int, ...]) -> int:
    if n.op is not Op.LOOP:
        return copy_node(b, n, srcs)
    body: Graph = n.attrs["body"]
    first, nx = 1 + n.attrs["n_carry"], n.attrs.get("n_xs", 0)
    read = {s for m in body.nodes for s in m.srcs} | set(body.outputs)
    keep = [j for j, bi in enumerate(body.inputs) if j < first or bi in read]
    if len(keep) == len(body.inputs):
        return copy_node(b, n, srcs)
    dropped = set(body.inputs) - {body.inputs[j] for j in keep}
    nb, remap = Builder(body.name), dict[int, int]()
    for i, m in enumerate(body.nodes):
        if i not in dropped:
            remap[i] = copy_node(nb, m, tuple(remap[s] for s in m.srcs))
    body = nb.build(tuple(remap[body.inputs[j]] for j in keep),
                    tuple(remap[o] for o in body.outputs), body.output_names)
    n_xs = sum(1 for j in keep if first <= j < first + nx)
    return copy_node(b, replace(n, attrs={**n.attrs, "body": body, "n_xs": n_xs}),
                     tuple(srcs[j - 1] for j in keep[1:]))
