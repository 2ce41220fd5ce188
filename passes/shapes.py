"""infer_shapes and bind_dims: re-derive every type from the shape rules.

`infer_shapes` recomputes each node's type with `shape_rules` (so a pass that
built a node with a stale type is caught), keeping symbolic dims symbolic.
`bind_dims` substitutes values for some symbols (`--dims B=8`) in every
shape-carrying attribute, then re-infers.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ember.ir import dims
from ember.ir.graph import Builder, Graph, Node

from .rewrite import map_bodies, map_graph

SHAPE_ATTRS = ("shape", "stops")


def infer_shapes(g: Graph) -> Graph:
    """g with every type recomputed from its inputs (regions first)."""
    def visit(b: Builder, n: Node, srcs: tuple[int, ...]) -> int:
        return b.add(n.op, srcs, n.attrs, n.loc)
    return map_graph(map_bodies(g, infer_shapes), visit)


def bind_dims(g: Graph, env: Mapping[str, int]) -> Graph:
    """g specialised to the given symbol values."""
    def visit(b: Builder, n: Node, srcs: tuple[int, ...]) -> int:
        return b.add(n.op, srcs, _bind_attrs(n.attrs, env), n.loc)
    return map_graph(map_bodies(g, lambda body: bind_dims(body, env)), visit)


def _bind_attrs(attrs: dict[str, Any], env: Mapping[str, int]) -> dict[str, Any]:
    out = dict(attrs)
    for key in SHAPE_ATTRS:
        if key in out:
            out[key] = tuple(dims.substitute(d, env) for d in out[key])
    for key in ("length", "dim"):   # a scan's length, a DIM node's dimension
        if key in out:
            out[key] = dims.substitute(out[key], env)
    return out


