"""recognize: softmax attention becomes one IR op, before fusion and autodiff.

    o = softmax(score_mod(q @ k^T, captured...)) @ v

where the softmax is the primitive spelling every builtin expands to (max
under stop_grad, sub, exp, sum, div over the last axis), score_mod is a chain
of elementwise ops keeping the score shape (scale, causal or additive mask,
bias), and every intermediate is read only inside the pattern, becomes

    %a = attention q k v captured... causal=...     (score_mod region)
    o = get %a index=0;  lse = get %a index=1

The region takes the raw score tile and the captured operands: whatever the
chain reads that is not computed from constants, iotas and dims alone (an
additive mask input, a learned bias). Those small index computations (the
causal mask) are copied into the region, so kernels evaluate them from tile
indices. q, k and v must share one batch shape (no broadcasting); other
spellings stay generic kernels. Rewritten nodes are left dead for dce.

Running before the grad pass, the op gets one VJP rule (passes/vjp.py) instead
of a T x T chain of primitive rules, and no kernel materializes the scores.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ember.ir.graph import Builder, Graph
from ember.ir.ops import ELEMENTWISE, MOVEMENT, Op

from .rewrite import copy_node, map_bodies

# What a region may recompute from tile indices: nothing here reads memory.
INDEX_ONLY = frozenset({Op.CONST, Op.FULL, Op.IOTA, Op.DIM}) | ELEMENTWISE | (
    MOVEMENT - {Op.GATHER, Op.INDEX})


@dataclass
class Match:
    """One attention subgraph: its result, operands and score chain."""

    o: int              # softmax(...) @ v
    q: int
    kt: int             # k^T, [..., DK, TK]
    v: int
    scores: int         # q @ k^T
    chain: list[int]    # the score_mod ops, from the logits down to the scores


def recognize(g: Graph) -> Graph:
    """Rewrite every attention subgraph of g (and of its regions) into the op."""
    g = map_bodies(g, recognize)
    users = g.users()
    found: dict[int, Match] = {}
    for i, n in enumerate(g.nodes):
        m = match_attention(g, users, i) if n.op is Op.MATMUL else None
        if m is not None:
            found[m.o] = m
    if not found:
        return g
    b = Builder(g.name)
    remap: dict[int, int] = {}
    for i, n in enumerate(g.nodes):
        new = copy_node(b, n, tuple(remap[s] for s in n.srcs))
        remap[i] = _emit(b, g, found[i], remap) if i in found else new
    return b.build(tuple(remap[i] for i in g.inputs), tuple(remap[o] for o in g.outputs),
                   g.output_names)


def _emit(b: Builder, g: Graph, m: Match, remap: dict[int, int]) -> int:
    """The op for match m; returns its GET of o."""
    loc = g.nodes[m.o].loc
    body, captured = score_region(g, m)
    k = _untransposed(b, remap[m.kt], loc)
    srcs = (remap[m.q], k, remap[m.v], *(remap[c] for c in captured))
    attrs = {"causal": _is_causal(g, m.chain, m.scores), "body": body}
    op = b.add(Op.ATTENTION, srcs, attrs, loc)
    b.add(Op.GET, (op,), {"index": 1}, loc)   # lse: read by the backward, else dce drops it
    return b.add(Op.GET, (op,), {"index": 0}, loc)


def _untransposed(b: Builder, kt: int, loc: Any) -> int:
    """k [..., TK, DK] from k^T: a transpose of k^T, composed with the
    permutation k^T is itself a view by (usually the transpose of k)."""
    n = b.nodes[kt]
    r = len(n.tensor.shape)
    perm: tuple[int, ...] = (*range(r - 2), r - 1, r - 2)
    if n.op is Op.PERMUTE:
        kt, perm = n.srcs[0], tuple(n.attrs["perm"][p] for p in perm)
    if perm == tuple(range(r)):
        return kt
    return b.add(Op.PERMUTE, (kt,), {"perm": perm}, loc)


def score_region(g: Graph, m: Match) -> tuple[Graph, list[int]]:
    """The score_mod region (scores, captured...) -> logits, and the captured
    nodes of g in the order the region takes them."""
    b = Builder("score_mod")
    s = g.nodes[m.scores]
    env = {m.scores: b.add(Op.INPUT, (), {"name": "s", "shape": s.tensor.shape,
                                          "dtype": s.tensor.dtype}, s.loc)}
    captured: list[int] = []
    for i in reversed(m.chain):
        for src in g.nodes[i].srcs:
            if src in env:
                continue
            if _index_only(g, src):
                _copy_into(b, g, src, env)
            else:
                t = g.nodes[src].tensor
                env[src] = b.add(Op.INPUT, (), {"name": f"c{len(captured)}", "shape": t.shape,
                                                "dtype": t.dtype}, g.nodes[src].loc)
                captured.append(src)
        env[i] = copy_node(b, g.nodes[i], tuple(env[x] for x in g.nodes[i].srcs))
    logits = env[m.chain[0]] if m.chain else env[m.scores]
    inputs = (env[m.scores], *(env[c] for c in captured))
    return b.build(inputs, (logits,), ("logits",)), captured


def _index_only(g: Graph, i: int) -> bool:
    """Is node i computed from constants, iotas and dims alone?"""
    todo, seen = [i], set()
    while todo:
        j = todo.pop()
        if j not in seen:
            if g.nodes[j].op not in INDEX_ONLY:
                return False
            seen.add(j)
            todo.extend(g.nodes[j].srcs)
    return True


def _copy_into(b: Builder, g: Graph, i: int, env: dict[int, int]) -> None:
    for s in g.nodes[i].srcs:
        if s not in env:
            _copy_into(b, g, s, env)
    env[i] = copy_node(b, g.nodes[i], tuple(env[s] for s in g.nodes[i].srcs))


# ---- the match --------------------------------------------------------------------

def match_attention(g: Graph, users: list[list[int]], o: int) -> Match | None:
    """The attention subgraph ending in the matmul o, or None."""
    p, v = g.nodes[o].srcs
    sm = _softmax(g, p)
    if sm is None:
        return None
    x, inner = sm
    chain, s = _score_chain(g, x)
    if s is None or g.nodes[s].op is not Op.MATMUL:
        return None
    q, kt = g.nodes[s].srcs
    nodes = {s, *chain, *inner, p}
    read_inside = all(set(users[i]) <= nodes | {o} for i in nodes)
    if not read_inside or nodes & set(g.outputs) or not _one_batch(g, q, kt, v):
        return None
    return Match(o, q, kt, v, s, chain)


def _one_batch(g: Graph, q: int, kt: int, v: int) -> bool:
    shapes = [g.nodes[i].tensor.shape for i in (q, kt, v)]
    return all(len(t) >= 2 and t[:-2] == shapes[0][:-2] for t in shapes)


def _last_axis_reduce(g: Graph, i: int, op: Op) -> int | None:
    """The src of node i if it is `op` over the last axis with keepdims."""
    n = g.nodes[i]
    rank = len(g.nodes[n.srcs[0]].tensor.shape) if n.srcs else 0
    if n.op is op and n.attrs["axes"] == (rank - 1,) and n.attrs["keepdims"]:
        return n.srcs[0]
    return None


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


# ---- causal masks -------------------------------------------------------------------

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
