"""The one rebuilding helper every pass uses.

`map_graph` walks a graph in order, hands each node (with its srcs already
renumbered) to a visitor that appends zero or more nodes to a fresh Builder and
returns the id that now stands for the old node.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

from ember.ir.graph import Builder, Graph, Node

Visitor = Callable[[Builder, Node, tuple[int, ...]], int]


def copy_node(b: Builder, n: Node, srcs: tuple[int, ...]) -> int:
    """Append n unchanged but for its renumbered srcs."""
    return b.add(n.op, srcs, n.attrs, n.loc, n.type)


def map_graph(g: Graph, visit: Visitor) -> Graph:
    b = Builder(g.name)
    remap: dict[int, int] = {}
    for i, n in enumerate(g.nodes):
        remap[i] = visit(b, n, tuple(remap[s] for s in n.srcs))
    return b.build(tuple(remap[i] for i in g.inputs), tuple(remap[o] for o in g.outputs),
                   g.output_names)


def map_bodies(g: Graph, fn: Callable[[Graph], Graph]) -> Graph:
    """Apply a graph pass to the body of every region node of g (one level)."""
    def visit(b: Builder, n: Node, srcs: tuple[int, ...]) -> int:
        if "body" in n.attrs:
            n = replace(n, attrs={**n.attrs, "body": fn(n.attrs["body"])})
        return copy_node(b, n, srcs)
    return map_graph(g, visit)
