"""regroup: what fusion does after placing each node (passes/fuse.py).

Placement decides node by node; these passes look at whole kernels. Each
takes a Plan and changes it in place, keeping `plan.home` consistent:

- rematerialize: a short epilogue chain only the backward reads is recomputed
  there rather than stored;
- shared_chains: a long elementwise chain several kernels would recompute is
  stored once instead;
- merge_pointwise, fold_into_matmuls, store_permuted: kernels that can share a
  launch (a pointwise root recomputed in a later one, a matmul's A operand as
  its prologue, a same-shape epilogue, a bias gradient's column sums, a
  transposed weight gradient stored by its own conv or matmul).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ember.ir.graph import Graph
from ember.ir.ops import ELEMENTWISE, LEAF, MOVEMENT, Op

from . import fuse  # the dependency queries; fuse imports this module in turn

if TYPE_CHECKING:
    from .fuse import Kernel, Plan

# The rematerialization policy at the forward/backward boundary: a short
# elementwise chain in a forward matmul's or conv's epilogue that only the
# backward reads (a GELU's intermediates) is not stored; the backward kernel
# recomputes it from values stored anyway, which costs less than the memory
# traffic and the saved bytes. (Forward-only graphs are unchanged.)
REMAT_CHAIN = 8


def rematerialize(plan: Plan) -> None:
    g = plan.graph
    forward = forward_nodes(g)
    if len(forward) == len(g.nodes):
        return
    users = g.users()
    for k, kern in enumerate(plan.kernels):
        if kern.kind not in ("matmul", "conv") or kern.anchor not in forward:
            continue
        for i in sorted(kern.nodes, reverse=True):
            outside = [u for u in users[i] if plan.home.get(u) != k]
            if (i != kern.anchor and i not in g.outputs and g.nodes[i].op in ELEMENTWISE
                    and outside and not forward & set(outside)
                    and _epilogue_chain(plan, k, i) <= REMAT_CHAIN):
                kern.nodes.remove(i)
                del plan.home[i]


def forward_nodes(g: Graph) -> set[int]:
    """What the graph's own (not `grad.*`) outputs need."""
    out: set[int] = set()
    todo = [o for o, name in zip(g.outputs, g.output_names) if not name.startswith("grad.")]
    while todo:
        i = todo.pop()
        if i not in out:
            out.add(i)
            todo.extend(g.nodes[i].srcs)
    return out


def _epilogue_chain(plan: Plan, k: int, i: int) -> int:
    """How many elementwise nodes recomputing node i repeats, down to values
    stored by kernels (too many if the chain holds anything else)."""
    g, kern = plan.graph, plan.kernels[k]
    seen, todo = set(), [i]
    while todo:
        j = todo.pop()
        n = g.nodes[j]
        if j in seen or j == kern.anchor or n.op in LEAF or n.op is Op.GET:
            continue
        if plan.home.get(j) not in (k, None):
            continue  # stored by another kernel
        if n.op not in ELEMENTWISE | MOVEMENT:
            return REMAT_CHAIN + 1
        seen.add(j)
        todo.extend(n.srcs)
    return sum(1 for j in seen if g.nodes[j].op in ELEMENTWISE)


# Recomputing an unstored value in every kernel that reads it is free for a
# short chain and quadratic for a long one (a residual stream's gradient,
# summed layer by layer through a deep network): a chain longer than this,
# read by two kernels or more, is stored once.
SHARED_CHAIN = 24


def shared_chains(plan: Plan) -> set[int]:
    """Elementwise values that several kernels would recompute from long chains."""
    g = plan.graph
    readers: list[set[int]] = [set() for _ in g.nodes]
    for k, kern in enumerate(plan.kernels):
        todo = [s for i in kern.nodes for s in g.nodes[i].srcs]
        while todo:
            i = todo.pop()
            if i not in plan.home and k not in readers[i]:
                readers[i].add(k)
                todo.extend(g.nodes[i].srcs)
    size = [0] * len(g.nodes)
    stored: set[int] = set()
    for i, n in enumerate(g.nodes):
        if i in plan.home or n.op not in ELEMENTWISE:
            continue
        size[i] = 1 + sum(size[s] for s in n.srcs)
        if size[i] > SHARED_CHAIN and len(readers[i]) > 1:
            stored.add(i)
            size[i] = 0
    return stored


def merge_pointwise(plan: Plan) -> None:
    """A pointwise root recomputed inside a later same-shape root is stored there."""
    g = plan.graph
    roots = [k for k, kern in enumerate(plan.kernels) if kern.kind == "pointwise"]
    for a in roots:
        for b in roots:
            ka, kb = plan.kernels[a], plan.kernels[b]
            if (a != b and ka.nodes and kb.nodes and ka.anchor < kb.anchor
                    and g.nodes[ka.anchor].tensor.shape == g.nodes[kb.anchor].tensor.shape
                    and ka.anchor in _inlined_closure(plan, kb.anchor)
                    and not any(fuse.depends_on(plan, d, a) for d in fuse.kernel_deps(plan, b)
                                if d != a)):
                kb.nodes[:0] = ka.nodes
                for i in ka.nodes:
                    plan.home[i] = b
                ka.nodes = []
    _compact(plan)


def fold_into_matmuls(plan: Plan) -> None:
    """Save a launch per matmul: a pointwise root that is the matmul's [M, K]
    operand A is computed in its K loop and stored by the first column of
    programs (a prologue); then a pointwise root of the matmul's output shape
    that reads one of its buffers, and neither needs nor feeds it, is computed
    in its epilogue; and a column sum of its [K, N] operand (a bias gradient)
    accumulates in its K loop. (An LSTM's backward step becomes one kernel:
    the gate gradients, the carried cell gradient and dgates @ W_hh^T.)"""
    g = plan.graph
    for m, mk in enumerate(plan.kernels):
        a = g.nodes[mk.anchor].srcs[0] if mk.kind == "matmul" else -1
        p = next((p for p, pk in enumerate(plan.kernels) if pk.kind == "pointwise"
                  and pk.nodes and pk.anchor == a and len(g.nodes[a].tensor.shape) == 2), None)
        if p is not None and not any(fuse.depends_on(plan, d, p) for d in fuse.kernel_deps(plan, m)
                                     if d != p):
            mk.info["prologue"] = a
            _move_nodes(plan, p, m)
    for m, mk in enumerate(plan.kernels):
        r = next((r for r, rk in enumerate(plan.kernels) if _column_sum_of(plan, rk, mk)), None)
        if r is not None and not fuse.depends_on(plan, r, m) and not fuse.depends_on(plan, m, r):
            mk.info["colsum"] = plan.kernels[r].anchor
            _move_nodes(plan, r, m)
    for m, mk in enumerate(plan.kernels):
        for p, pk in enumerate(plan.kernels):
            if (mk.kind == "matmul" and pk.kind == "pointwise" and pk.nodes
                    and g.nodes[pk.anchor].tensor.shape == g.nodes[mk.anchor].tensor.shape
                    and not fuse.depends_on(plan, p, m) and not fuse.depends_on(plan, m, p)
                    and _shared_reads(plan, p, m)):
                _move_nodes(plan, p, m)
    _compact(plan)


def store_permuted(plan: Plan) -> None:
    """A matmul or conv result read only by a permute that must be stored (a
    conv weight gradient, computed as [C, O, kh, kw] and returned as
    [O, C, kh, kw]) is stored permuted by its own kernel: no copy kernel."""
    g = plan.graph
    users = g.users()
    for pk in plan.kernels:
        if pk.kind != "pointwise" or len(pk.nodes) != 1:
            continue
        p = pk.nodes[0]
        v = g.nodes[p].srcs[0] if g.nodes[p].op is Op.PERMUTE else -1
        k = plan.home.get(v)
        if (k is not None and plan.kernels[k].kind in ("matmul", "conv") and users[v] == [p]
                and v not in g.outputs):
            plan.kernels[k].nodes.append(p)
            plan.home[p] = k
            pk.nodes = []
    _compact(plan)


def _column_sum_of(plan: Plan, rk: Kernel, mk: Kernel) -> bool:
    """Is reduction kernel rk `sum(D, axis 0)` of a matmul's [K, N] operand D
    (a bias gradient beside its weight gradient)? The matmul loads every tile
    of D in its K loop anyway, so it can sum D's columns there."""
    g = plan.graph
    if rk.kind != "reduce" or len(rk.nodes) != 1 or "colsum" in mk.info:
        return False
    n, mm = g.nodes[rk.anchor], g.nodes[mk.anchor]
    if mk.kind == "conv":  # a weight gradient's filters are the output gradient
        wt = g.nodes[mm.srcs[1]]
        return (mm.attrs["groups"] == 1 and wt.op is Op.PERMUTE
                and wt.attrs["perm"] == (1, 0, 2, 3) and n.op is Op.SUM
                and n.srcs[0] == wt.srcs[0] and n.attrs["axes"] == (0, 2, 3)
                and not n.attrs["keepdims"])
    if mk.kind != "matmul":
        return False
    d = mm.srcs[1]
    return (n.op is Op.SUM and n.srcs[0] == d and n.attrs["axes"] == (0,)
            and not n.attrs["keepdims"] and len(g.nodes[d].tensor.shape) == 2
            and len(g.nodes[mm.srcs[0]].tensor.shape) == 2 and "colsum" not in mk.info)


def _compact(plan: Plan) -> None:
    """Drop the kernels merges emptied and renumber the homes."""
    plan.kernels[:] = [k for k in plan.kernels if k.nodes]
    plan.home.clear()
    for k, kern in enumerate(plan.kernels):
        for i in kern.nodes:
            plan.home[i] = k


def _move_nodes(plan: Plan, src: int, dst: int) -> None:
    plan.kernels[dst].nodes[:0] = plan.kernels[src].nodes
    for i in plan.kernels[src].nodes:
        plan.home[i] = dst
    plan.kernels[src].nodes = []


def _shared_reads(plan: Plan, a: int, b: int) -> bool:
    """Do kernels a and b read a common stored value or input?"""
    def reads(k: int) -> set[int]:
        return {s for i in plan.kernels[k].nodes for s in plan.graph.nodes[i].srcs
                if plan.home.get(s) != k}
    return bool(_leaves_of(plan, reads(a)) & _leaves_of(plan, reads(b)))


def _leaves_of(plan: Plan, nodes: set[int]) -> set[int]:
    """The stored values and graph inputs a set of values is computed from."""
    out, todo = set(), list(nodes)
    while todo:
        i = todo.pop()
        n = plan.graph.nodes[i]
        if i in plan.home or n.op in LEAF or n.op is Op.GET or not n.srcs:
            out.add(i)
        elif i not in out:
            out.add(i)
            todo.extend(n.srcs)
    return out


def _inlined_closure(plan: Plan, root: int) -> set[int]:
    """Nodes whose value is recomputed when `root` is computed (not loaded)."""
    out, todo = set(), list(plan.graph.nodes[root].srcs)
    while todo:
        i = todo.pop()
        if i in out:
            continue
        k = plan.home.get(i)
        if k is None:
            out.add(i)
            todo.extend(plan.graph.nodes[i].srcs)
        elif plan.kernels[k].kind == "pointwise":
            out.add(i)  # another root: its kernel could store it instead
    return out
