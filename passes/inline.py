"""inline: splice every CALL region into its caller.

The callee's body was lowered for this call site's argument types, so inlining
is renumbering: body inputs become the call's srcs, GETs of the call become the
body's outputs, and parameter names (local to the callee's layer) and random
stream names get the call's prefix (`attn.wq` -> `blocks.0.attn.wq`).
"""

from __future__ import annotations

from dataclasses import replace

from ember.ir.graph import Builder, Graph, Node
from ember.ir.ops import Op

from .rewrite import copy_node, map_bodies, map_graph


def inline(g: Graph) -> Graph:
    """The graph with no CALL nodes left, at any depth."""
    b = Builder(g.name)
    remap: dict[int, int] = {}
    results: dict[int, tuple[int, ...]] = {}
    for i, n in enumerate(g.nodes):
        srcs = tuple(remap.get(s, -1) for s in n.srcs)
        if n.op is Op.CALL:
            results[i] = _splice(b, n, srcs)
        elif n.op is Op.GET and n.srcs[0] in results:
            remap[i] = results[n.srcs[0]][n.attrs["index"]]
        elif "body" in n.attrs:
            remap[i] = copy_node(b, replace(n, attrs={**n.attrs, "body": inline(n.attrs["body"])}),
                                 srcs)
        else:
            remap[i] = copy_node(b, n, srcs)
    return b.build(tuple(remap[i] for i in g.inputs), tuple(remap[o] for o in g.outputs),
                   g.output_names)


def _splice(b: Builder, call: Node, args: tuple[int, ...]) -> tuple[int, ...]:
    body = add_prefix(inline(call.attrs["body"]), call.attrs["prefix"])
    remap = dict(zip(body.inputs, args))
    for i, n in enumerate(body.nodes):
        if i not in remap:
            remap[i] = copy_node(b, n, tuple(remap[s] for s in n.srcs))
    return tuple(remap[o] for o in body.outputs)


def add_prefix(g: Graph, prefix: str) -> Graph:
    """Qualify parameter and random-stream names with `prefix.`, in regions too."""
    if not prefix:
        return g

    def visit(b: Builder, n: Node, srcs: tuple[int, ...]) -> int:
        key = {Op.PARAM: "name", Op.RAND: "stream"}.get(n.op)
        if key:
            n = replace(n, attrs={**n.attrs, key: f"{prefix}.{n.attrs[key]}"})
        return copy_node(b, n, srcs)
    return map_graph(map_bodies(g, lambda body: add_prefix(body, prefix)), visit)
