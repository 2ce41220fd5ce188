"""Whole-subgraph fusions recognized before the generic fusion rules.

attention: softmax((q @ k^T) <elementwise score transform>) @ v, where the
  softmax is the primitive spelling every builtin expands to (max, sub, exp,
  sum, div over the last axis) and every intermediate is used only inside the
  pattern. One flash-attention kernel computes it: the T x T scores never
  reach memory.
gates: a sum of matmuls (plus elementwise terms such as a bias) whose only
  readers are equal-width slices along the last axis, e.g. an LSTM's
  `x_t @ W_ih + h @ W_hh + b` split into i, f, g, o. One kernel keeps one
  accumulator per slice and fuses whatever reads the slices (the cell update)
  as its epilogue: the gates tensor never reaches memory.

Each matcher returns (kind, anchor, nodes, info) or None; `info` carries what
the template needs (e.g. whether the mask is causal).
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
    for i, n in enumerate(g.nodes):
        if n.op is Op.MATMUL:
            m = match_attention(g, users, i)
        elif any(g.nodes[u].op is Op.SLICE for u in users[i]):
            m = match_gates(g, users, i)
        else:
            m = None
        if m and not taken & set(m.nodes):
            found.append(m)
            taken |= set(m.nodes)
    return found


def _only_used_by(users: list[list[int]], nodes: set[int], inside: set[int]) -> bool:
    return all(set(users[i]) <= inside for i in nodes)


def _last_axis_reduce(g: Graph, i: int, op: Op) -> int | None:
    """The src of node i if it is `op` over the last axis with keepdims."""
    n = g.nodes[i]
    rank = len(g.nodes[n.srcs[0]].tensor.shape) if n.srcs else 0
    if n.op is op and n.attrs["axes"] == (rank - 1,) and n.attrs["keepdims"]:
        return n.srcs[0]
    return None


# ---- attention -------------------------------------------------------------------

def match_attention(g: Graph, users: list[list[int]], o: int) -> Match | None:
    p, v = g.nodes[o].srcs
    sm = _softmax(g, p)
    if sm is None:
        return None
    x, inner = sm
    chain, s = _score_chain(g, x)
    if s is None or g.nodes[s].op is not Op.MATMUL or len(g.nodes[s].tensor.shape) < 2:
        return None
    nodes = {s, *chain, *inner, p}
    if not _only_used_by(users, nodes, nodes | {o}) or nodes & set(g.outputs):
        return None
    return Match("attention", o, sorted(nodes | {o}),
                 {"scores": s, "logits": x, "probs": p, "causal": _is_causal(g, chain, s)})


def _softmax(g: Graph, p: int) -> tuple[int, list[int]] | None:
    """If p = exp(x - max(x)) / sum(...) over the last axis: (x, its nodes)."""
    n = g.nodes[p]
    if n.op is not Op.DIV:
        return None
    e, z = n.srcs
    if _last_axis_reduce(g, z, Op.SUM) != e or g.nodes[e].op is not Op.EXP:
        return None
    d = g.nodes[e].srcs[0]
    if g.nodes[d].op is not Op.SUB:
        return None
    x, shift = g.nodes[d].srcs
    mx = g.nodes[shift].srcs[0] if g.nodes[shift].op is Op.STOP_GRAD else shift
    if _last_axis_reduce(g, mx, Op.MAX) != x:
        return None
    return x, sorted({mx, shift, d, e, z})


def _score_chain(g: Graph, x: int) -> tuple[list[int], int | None]:
    """Walk from the transformed scores back to q @ k^T through elementwise ops
    that keep the score shape (scale, mask, bias)."""
    shape = g.nodes[x].tensor.shape
    chain: list[int] = []
    i = x
    while g.nodes[i].op in ELEMENTWISE:
        full = [s for s in g.nodes[i].srcs if g.nodes[s].tensor.shape == shape
                and g.nodes[s].op is not Op.IOTA and g.nodes[s].tensor.dtype.is_float]
        if len(full) != 1:
            return chain, None
        chain.append(i)
        i = full[0]
    return chain, i if g.nodes[i].tensor.shape == shape else None


# A masked score at or below this contributes exp(fill - rowmax) == 0 (it
# underflows in float32 and float64) unless real scores come within ~1e4 of
# it, so key tiles past the diagonal can be skipped without changing a bit.
MASKED = -1e4


def _is_causal(g: Graph, chain: list[int], s: int) -> bool:
    """Is the score transform `where(row >= col, scores, fill)` over the last
    two axes, followed only by positive constant scalings, with a fill that
    still vanishes after them? Any other later op could bring masked entries
    back, so key tiles past the diagonal could not be skipped."""
    scale = 1.0
    for pos, i in enumerate(chain):
        n = g.nodes[i]
        if n.op is Op.WHERE:
            score_side = chain[pos + 1] if pos + 1 < len(chain) else s
            return n.srcs[1] == score_side and _causal_where(g, n, scale)
        factor = _positive_scale(g, n)
        if factor is None:
            return False
        scale *= factor
    return False


def _causal_where(g: Graph, n: Any, scale: float) -> bool:
    fill = g.nodes[n.srcs[2]]
    if fill.op is not Op.CONST or fill.attrs["value"] * scale > MASKED:
        return False
    c = g.nodes[_through_views(g, n.srcs[0])]
    if c.op is not Op.GE:
        return False
    rows, cols = (g.nodes[_through_views(g, x)] for x in c.srcs)
    if rows.op is not Op.IOTA or cols.op is not Op.IOTA:
        return False
    rank = len(rows.tensor.shape)
    return rows.attrs["axis"] == rank - 2 and cols.attrs["axis"] == rank - 1


def _positive_scale(g: Graph, n: Any) -> float | None:
    """The factor of `x * c`, `c * x` or `x / c` with a constant c > 0, else None."""
    consts = [g.nodes[x].attrs["value"] for x in n.srcs if g.nodes[x].op is Op.CONST]
    if len(consts) != 1 or consts[0] <= 0:
        return None
    if n.op is Op.MUL:
        return float(consts[0])
    if n.op is Op.DIV and g.nodes[n.srcs[1]].op is Op.CONST:
        return 1.0 / float(consts[0])
    return None


def _through_views(g: Graph, i: int) -> int:
    while g.nodes[i].op in (Op.EXPAND, Op.RESHAPE):
        i = g.nodes[i].srcs[0]
    return i


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
    if not _only_used_by(users, nodes, nodes | set(slices)) or nodes & set(g.outputs):
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
    """Follow elementwise ops down the full-shape operand to a sum of matmuls."""
    shape = g.nodes[i].tensor.shape
    chain: list[int] = []
    while not _is_matmul_sum(g, i):
        n = g.nodes[i]
        full = [s for s in n.srcs if g.nodes[s].tensor.shape == shape]
        if n.op not in ELEMENTWISE or len(full) != 1:
            return chain, None
        chain.append(i)
        i = full[0]
    return chain, i


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
