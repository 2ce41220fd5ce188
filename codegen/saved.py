"""Saved activations: what a forward+backward graph keeps in memory between
its forward and its backward half.

The forward half is everything the entry's own outputs need; the rest (the
`grad.*` outputs' computation) is the backward half. A value is saved when
the forward half stores it (a kernel output, or a scan's stacked per-step
outputs) and a backward kernel or scan reads it. Values the backward
recomputes inside its kernels (elementwise chains, views) are not saved: this
is the rematerialization policy at kernel boundaries, made measurable.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from ember.ir import dims
from ember.ir.graph import Graph, TensorType
from ember.ir.ops import LEAF, Op
from ember.passes.fuse import Plan
from ember.passes.regroup import forward_nodes


def saved_activations(plan: Plan, env: Mapping[str, int]) -> dict[str, int]:
    """Bytes of each saved value (named %id), for a graph with grad.* outputs."""
    g = plan.graph
    forward = forward_nodes(g)
    saved: set[int] = set()
    for i, n in enumerate(g.nodes):
        if i not in forward and (i in plan.home or n.op is Op.LOOP):
            for s in n.srcs:
                saved |= {v for v in _stored(plan, s) if _is_forward(g, v, forward)}
    return {f"%{i}": _bytes(g, i, env) for i in sorted(saved)}


def _stored(plan: Plan, i: int) -> set[int]:
    """The values in memory that reading node i reads (through views and
    elementwise nodes recomputed in the reader)."""
    g = plan.graph
    n = g.nodes[i]
    if n.op is Op.GET or (i in plan.home and isinstance(n.type, TensorType)):
        return {i}
    if n.op in LEAF or not isinstance(n.type, TensorType):
        return set()
    return set().union(*(_stored(plan, s) for s in n.srcs)) if n.srcs else set()


def _is_forward(g: Graph, i: int, forward: set[int]) -> bool:
    n = g.nodes[i]
    return i in forward or (n.op is Op.GET and n.srcs[0] in forward)


def _bytes(g: Graph, i: int, env: Mapping[str, int]) -> int:
    t = g.nodes[i].tensor
    return math.prod(dims.bind(d, env) for d in t.shape) * t.dtype.itemsize
