"""Whole-subgraph fusions recognized before the generic fusion rules.

(Attention is no pattern: passes/recognize.py makes it an IR op.)

gates: a sum of matmuls (plus elementwise terms such as a bias) whose only
  readers are equal-width slices along the last axis, e.g. an LSTM's
  `x_t @ W_ih + h @ W_hh + b` split into i, f, g, o. One kernel keeps one
  accumulator per slice and fuses whatever reads the slices (the cell update)
  as its epilogue: the gates tensor reaches memory only when something
  outside the step needs it (a scan saving it for its backward).

Each matcher returns (kind, anchor, nodes, info) or None; `info` carries what
the template needs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ember.ir.graph import Graph
from ember.ir.ops import ELEMENTWISE, Op


@dataclass
class Match:
    kind: str
    anchor: int
    nodes: list[int]
    info: dict[str, Any] = field(default_factory=dict)


def find_matches(g: Graph) -> list[Match]:
    users = g.users()
    found: list[Match] = []
    taken: set[int] = set()
    for i in range(len(g.nodes)):
        m = match_gates(g, users, i) if any(g.nodes[u].op is Op.SLICE
                                            for u in users[i]) else None
        if m and not taken & set(m.nodes):
            found.append(m)
            taken |= set(m.nodes)
    return found


def _only_used_by(users: list[list[int]], nodes: set[int], inside: set[int]) -> bool:
    return all(set(users[i]) <= inside for i in nodes)


# ---- gates -------------------------------------------------------------------------

def match_gates(g: Graph, users: list[list[int]], gate: int) -> Match | None:
    slices = _equal_slices(g, users, gate)
    if slices is None:
        return None
    chain, total = _down_to_matmul_sum(g, gate)
    if total is None:
        return None
    matmuls = _matmul_leaves(g, total)
    shape = g.nodes[gate].tensor.shape
    if not matmuls or any(not _rank2(g, m) or g.nodes[m].tensor.shape != shape
                          for m in matmuls):
        return None
    sums = _sum_nodes(g, total)
    nodes = set(matmuls) | set(sums) | set(chain)
    # the gates tensor itself may be an output (a scan saves it for its backward)
    if not _only_used_by(users, nodes, nodes | set(slices)) or (nodes - {gate}) & set(g.outputs):
        return None
    return Match("gates", slices[0], sorted(nodes | set(slices)),
                 {"total": total, "matmuls": matmuls, "slices": slices})


def _equal_slices(g: Graph, users: list[list[int]], gate: int) -> list[int] | None:
    """Users of gate, if all are equal-width slices covering its last axis."""
    shape = g.nodes[gate].tensor.shape
    if len(shape) != 2 or not isinstance(shape[-1], int):
        return None
    cuts = []
    for u in users[gate]:
        n = g.nodes[u]
        if n.op is not Op.SLICE or n.attrs["steps"] != (1, 1) or n.attrs["starts"][0] != 0:
            return None
        cuts.append((n.attrs["starts"][1], n.attrs["stops"][1], u))
    cuts.sort()
    width = cuts[0][1] - cuts[0][0] if cuts else 0
    expected = [(k * width, (k + 1) * width) for k in range(len(cuts))]
    if len(cuts) < 2 or [c[:2] for c in cuts] != expected or width * len(cuts) != shape[-1]:
        return None
    return [c[2] for c in cuts]


def _down_to_matmul_sum(g: Graph, i: int) -> tuple[list[int], int | None]:
    """Follow elementwise ops down the full-shape operand that leads to a sum
    of matmuls; other operands (a bias, a hoisted input projection x_t @ W_ih
    read per step) are loaded by the kernel."""
    shape = g.nodes[i].tensor.shape
    chain: list[int] = []
    while not _is_matmul_sum(g, i):
        n = g.nodes[i]
        full = [s for s in n.srcs if g.nodes[s].tensor.shape == shape and _reaches_matmul(g, s)]
        if n.op not in ELEMENTWISE or len(full) != 1:
            return chain, None
        chain.append(i)
        i = full[0]
    return chain, i


def _reaches_matmul(g: Graph, i: int) -> bool:
    """Is there a matmul below node i through elementwise ops?"""
    n = g.nodes[i]
    if n.op is Op.MATMUL:
        return True
    return n.op in ELEMENTWISE and any(_reaches_matmul(g, s) for s in n.srcs)


def _is_matmul_sum(g: Graph, i: int) -> bool:
    n = g.nodes[i]
    if n.op is Op.MATMUL:
        return True
    return n.op is Op.ADD and all(_is_matmul_sum(g, s) for s in n.srcs)


def _matmul_leaves(g: Graph, i: int) -> list[int]:
    n = g.nodes[i]
    if n.op is Op.MATMUL:
        return [i]
    return [m for s in n.srcs for m in _matmul_leaves(g, s)]


def _sum_nodes(g: Graph, i: int) -> list[int]:
    n = g.nodes[i]
    if n.op is Op.MATMUL:
        return []
    return [i] + [a for s in n.srcs for a in _sum_nodes(g, s)]


def _rank2(g: Graph, m: int) -> bool:
    return all(len(g.nodes[s].tensor.shape) == 2 for s in g.nodes[m].srcs)
