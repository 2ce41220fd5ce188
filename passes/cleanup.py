"""cse and dce: remove repeated and unused computation.

CSE keys a node by (op, srcs, attrs); leaves that read state (INPUT) or draw
random numbers per stream are keyed by name so two reads of one parameter
merge but two dropout masks never do. Regions are never merged. DCE keeps
inputs and everything an output depends on.
"""

from __future__ import annotations

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
    """Drop nodes no output depends on (inputs always stay)."""
    g = map_bodies(g, dce)
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
