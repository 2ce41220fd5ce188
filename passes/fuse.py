"""fuse: group an optimized graph into kernels.

The decision (`can_join`: may this node be computed inside that kernel, and if
not, why) is kept apart from the rebuild (`fuse`, which walks the graph once
and records the decisions in a `Plan`). The rules:

- Anchors start kernels: matmul, conv2d, pooling and reductions.
- An elementwise node joins the kernel of one of its operands (the latest) when
  it lives in that kernel's iteration space: a matmul/conv/pool epilogue has
  the anchor's output shape; a reduction kernel covers its full shape and its
  per-row (reduced) shape. A reduction joins a reduction kernel over the same
  shape and axes (softmax, layer_norm, cross_entropy's inner sum).
- Movement ops, constants, iota and rand are never materialized: they are
  folded into the index arithmetic of whichever kernel reads them. Elementwise
  nodes that joined no kernel are likewise recomputed where they are used.
- A value is stored to memory only when a node outside its kernel reads it,
  or it is an output; graph outputs and loop operands computed by no kernel
  get a pointwise kernel of their own.
- LOOP regions are planned recursively; the launcher runs the body's kernels
  once per step.
- After placement, passes/regroup.py rematerializes at the forward/backward
  boundary and merges kernels that can share a launch (prologues, epilogues,
  column sums, transposed stores).

Before these rules run, passes/patterns.py claims whole subgraphs for the
gates pattern kernel (an LSTM step); their nodes are then out of the generic
rules' reach, except that elementwise readers of a gates kernel's slices may
join it as an epilogue. An attention op is a kernel of its own (elementwise
readers of o may join it too); its backward, two kernels (FlashAttention-2).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ember.ir import dims
from ember.ir.dims import Shape
from ember.ir.graph import Graph
from ember.ir.ops import ATTENTION_OPS, COMPUTE, ELEMENTWISE, LEAF, MOVEMENT, REDUCE, Op

from . import regroup
from .patterns import find_matches

ANCHORS = COMPUTE | REDUCE
ATTENTION_GRAD_KINDS = frozenset({"attention_dkdv", "attention_dq"})
ATTENTION_KINDS = ATTENTION_GRAD_KINDS | {"attention"}
FREE = frozenset({Op.CONST, Op.FULL, Op.IOTA, Op.RAND, Op.DIM}) | MOVEMENT


@dataclass
class Kernel:
    """One generated kernel: an anchor (or a pointwise root) and what joined it."""

    kind: str    # pointwise | reduce | matmul | conv | pool | attention(_dkdv|_dq) | gates
    anchor: int
    nodes: list[int] = field(default_factory=list)
    outputs: list[int] = field(default_factory=list)
    space: tuple[Shape, tuple[int, ...]] = ((), ())   # reduce: (full shape, axes)
    name: str = ""
    info: dict[str, Any] = field(default_factory=dict)  # what a pattern kernel needs


class Home(dict[int, int]):
    """node -> index of the kernel computing it; any change forgets the
    memoized answers of `_reads`, which depend on it."""

    def __init__(self) -> None:
        super().__init__()
        self.memo: dict[int, frozenset[int]] = {}    # node -> steps it reads
        self.reach: dict[int, frozenset[int]] = {}   # step -> steps it waits for

    def forget(self) -> None:
        self.memo.clear()
        self.reach.clear()

    def __setitem__(self, key: int, value: int) -> None:
        self.forget()
        super().__setitem__(key, value)

    def __delitem__(self, key: int) -> None:
        self.forget()
        super().__delitem__(key)

    def update(self, *args: Any, **kw: Any) -> None:
        self.forget()
        super().update(*args, **kw)

    def clear(self) -> None:
        self.forget()
        super().clear()


@dataclass
class Plan:
    graph: Graph
    kernels: list[Kernel]
    home: dict[int, int]                  # node -> index of the kernel computing it
    loops: dict[int, Plan]              # LOOP node -> plan of its body
    unfused: list[tuple[int, int, str]]   # (producer, consumer, why not fused)
    order: list[int] = field(default_factory=list)   # steps: kernel indices, or ~loop node

    def kernel_of(self, node: int) -> Kernel | None:
        k = self.home.get(node)
        return None if k is None else self.kernels[k]


KIND = {Op.MATMUL: "matmul", Op.CONV2D: "conv", Op.MAX_POOL2D: "pool", Op.AVG_POOL2D: "pool",
        Op.MAX_POOL2D_GRAD: "pool_grad"}


def fuse(g: Graph, enabled: bool = True) -> Plan:
    """Plan g's kernels; with enabled=False every compute op is its own kernel."""
    plan = Plan(g, [], Home(), {}, [])
    if enabled:
        for m in find_matches(g):
            plan.kernels.append(Kernel(m.kind, m.anchor, m.nodes, info=m.info))
            plan.home.update({i: len(plan.kernels) - 1 for i in m.nodes})
    for i, n in enumerate(g.nodes):
        if i in plan.home:
            continue
        if n.op is Op.LOOP:
            plan.loops[i] = fuse(n.attrs["body"], enabled)
        elif n.op in ATTENTION_OPS:
            _place_attention(plan, i)
        elif n.op is Op.FOREACH:
            _place_foreach(plan, i)
        elif n.op in ANCHORS:
            _place_anchor(plan, i, enabled)
        elif n.op in ELEMENTWISE and enabled:
            _try_join(plan, i)
    if enabled:
        regroup.rematerialize(plan)
    _materialize(plan, enabled)
    _mark_outputs(plan)
    plan.order = _schedule(plan)
    _name_kernels(plan)
    return plan


# ---- the decision -------------------------------------------------------------

def can_join(plan: Plan, k: int, i: int) -> str | None:
    """None if node i may be computed in kernel k, else the reason it may not."""
    g, kern = plan.graph, plan.kernels[k]
    n = g.nodes[i]
    shape = n.tensor.shape
    if kern.kind == "reduce":
        if not _in_reduce_space(shape, kern.space) and n.op not in REDUCE:
            return (f"{n.op.value} {dims.fmt(shape)} is outside the reduction's space "
                    f"{dims.fmt(kern.space[0])}")
        if n.op in REDUCE and (g.nodes[n.srcs[0]].tensor.shape, n.attrs["axes"]) != kern.space:
            return f"{n.op.value} reduces a different shape or axes"
        if n.op is Op.ARGMAX:
            return "argmax stays its own kernel"
        why = _broadcasts_reduced(plan, k, i, kern.space)
        if why:
            return why
    else:
        why = _joins_output_space(plan, k, i)
        if why:
            return why
    for s in n.srcs:
        if plan.home.get(s) != k and k in _reads(plan, s):
            return f"an operand reaches kernel {k} through a view or another kernel"
    if any(depends_on(plan, d, k) for s in n.srcs for d in _reads(plan, s) if d != k):
        return "joining would make two kernels wait for each other"
    return None


def _joins_output_space(plan: Plan, k: int, i: int) -> str | None:
    """May node i join kernel k (not a reduction kernel) in its output space:
    the anchor's output, or for a matmul with row reductions, its rows?"""
    g, kern, n = plan.graph, plan.kernels[k], plan.graph.nodes[i]
    rows = row_space(g, kern)
    if n.op in REDUCE:
        if (g.nodes[n.srcs[0]].tensor.shape, n.attrs["axes"]) != rows or n.op is Op.ARGMAX:
            return f"{n.op.value} needs the whole {kern.kind} result before it can reduce"
        return None
    if kern.kind in ATTENTION_GRAD_KINDS:
        return f"the {kern.kind} kernel stores its gradients as they are"
    if kern.kind == "foreach":
        # a summing one finishes in one program, which may go on with scalars
        scalar = n.op in ELEMENTWISE and n.tensor.shape == ()
        if not (scalar and g.nodes[kern.anchor].attrs.get("reduce")):
            return "a multi-tensor kernel stores its results as they are"
        return None
    if rows is not None and _in_reduce_space(n.tensor.shape, rows):
        return _broadcasts_reduced(plan, k, i, rows)
    if n.tensor.shape != out_shape(g, kern):
        return (f"{n.op.value} {dims.fmt(n.tensor.shape)} does not match the {kern.kind} "
                f"output {dims.fmt(out_shape(g, kern))}")
    return None


def _broadcasts_reduced(plan: Plan, k: int, i: int,
                        space: tuple[Shape, tuple[int, ...]]) -> str | None:
    """A per-row value read at full shape must keep its reduced axes as 1s."""
    g, n = plan.graph, plan.graph.nodes[i]
    full, axes = space
    keep = tuple(1 if a in axes else d for a, d in enumerate(full))
    for s in n.srcs:
        if (plan.home.get(s) == k and n.tensor.shape == full
                and g.nodes[s].tensor.shape not in (full, keep)):
            return (f"{n.op.value} broadcasts a reduced value "
                    f"{dims.fmt(g.nodes[s].tensor.shape)} along the reduced axes of "
                    f"{dims.fmt(full)}")
    return None


# A matmul whose output rows fit in one tile (blocks.tile caps N at 64) can
# reduce them in its epilogue: a classifier head's softmax and cross-entropy.
ROW_TILE = 64


def row_space(g: Graph, kern: Kernel) -> tuple[Shape, tuple[int, ...]] | None:
    """(output shape, (1,)) for a rank-2 matmul kernel whose rows fit one tile."""
    if kern.kind != "matmul":
        return None
    shape = out_shape(g, kern)
    if len(shape) != 2 or not isinstance(shape[1], int) or shape[1] > ROW_TILE:
        return None
    return shape, (1,)


def out_shape(g: Graph, kern: Kernel) -> Shape:
    """The shape of the anchor's result (of o, for an attention op)."""
    t = g.nodes[kern.anchor].type
    return (t[0] if isinstance(t, tuple) else t).shape


def _in_reduce_space(shape: Shape, space: tuple[Shape, tuple[int, ...]]) -> bool:
    full, axes = space
    keep = tuple(1 if a in axes else d for a, d in enumerate(full))
    rows = tuple(d for a, d in enumerate(full) if a not in axes)
    return shape in (full, keep, rows)


def _reads(plan: Plan, i: int) -> set[int]:
    """Steps (kernels, or ~node for a loop) whose stored results node i reads."""
    k = plan.home.get(i)
    if k is not None:
        return {k}
    n = plan.graph.nodes[i]
    if n.op is Op.GET and plan.graph.nodes[n.srcs[0]].op is Op.LOOP:
        return {~n.srcs[0]}
    # memoized until a node changes kernel (fusion asks this very often)
    memo = plan.home.memo if isinstance(plan.home, Home) else {}
    if i not in memo:
        out: set[int] = set()
        for s in plan.graph.nodes[i].srcs:
            out |= _reads(plan, s)
        memo[i] = frozenset(out)
    return set(memo[i])


def kernel_deps(plan: Plan, k: int) -> set[int]:
    """The steps a kernel (or, for k < 0, a loop) must wait for."""
    deps: set[int] = set()
    nodes = plan.kernels[k].nodes if k >= 0 else [~k]
    for i in nodes:
        for s in plan.graph.nodes[i].srcs:
            deps |= _reads(plan, s)
    deps.discard(k)
    return deps


def depends_on(plan: Plan, a: int, b: int) -> bool:
    """Does kernel a (transitively) need kernel b's results?"""
    return a == b or b in _waits_for(plan, a)


def _waits_for(plan: Plan, a: int) -> frozenset[int]:
    """Every step kernel a transitively waits for (memoized until a node
    changes kernel)."""
    memo = plan.home.reach if isinstance(plan.home, Home) else {}
    if a not in memo:
        seen: set[int] = set()
        todo = list(kernel_deps(plan, a))
        while todo:
            k = todo.pop()
            if k not in seen:
                seen.add(k)
                todo.extend(memo[k] if k in memo else kernel_deps(plan, k))
        memo[a] = frozenset(seen)
    return memo[a]


# ---- the rebuild ---------------------------------------------------------------

def _new_kernel(plan: Plan, kind: str, i: int) -> None:
    n = plan.graph.nodes[i]
    kern = Kernel(kind, i, [i])
    if kind == "reduce":
        kern.space = (plan.graph.nodes[n.srcs[0]].tensor.shape, n.attrs["axes"])
    plan.kernels.append(kern)
    plan.home[i] = len(plan.kernels) - 1


def _place_attention(plan: Plan, i: int) -> None:
    """An attention op is a kernel with its GETs; its backward is two, in the
    FlashAttention-2 shape: one over key blocks computes dk and dv, a second
    over query blocks dq (it runs after the first: it reads the op's operands,
    not its results)."""
    g = plan.graph
    gets = [u for u in g.users()[i] if g.nodes[u].op is Op.GET]
    if g.nodes[i].op is Op.ATTENTION:
        parts = [("attention", gets)]
    else:  # a kernel for the results that are read: dq is index 0
        dq = [u for u in gets if g.nodes[u].attrs["index"] == 0]
        parts = [p for p in [("attention_dkdv", [u for u in gets if u not in dq]),
                             ("attention_dq", dq)] if p[1]]
    parts[0][1].append(i)
    for kind, nodes in parts:
        plan.kernels.append(Kernel(kind, i, sorted(nodes)))
        plan.home.update({u: len(plan.kernels) - 1 for u in nodes})


def _place_foreach(plan: Plan, i: int) -> None:
    """A foreach op is one multi-tensor kernel with its GETs, whatever the
    number of groups; its operands come from memory."""
    gets = [u for u in plan.graph.users()[i] if plan.graph.nodes[u].op is Op.GET]
    plan.kernels.append(Kernel("foreach", i, sorted([i, *gets])))
    plan.home.update({u: len(plan.kernels) - 1 for u in [i, *gets]})


def _join(plan: Plan, k: int, i: int) -> None:
    plan.kernels[k].nodes.append(i)
    plan.home[i] = k


def _place_anchor(plan: Plan, i: int, enabled: bool) -> None:
    n = plan.graph.nodes[i]
    if n.op in REDUCE and enabled:
        # a kernel computing an operand first; then any reduction kernel over
        # the same rows (a backward's row sum beside the forward's softmax)
        space = (plan.graph.nodes[n.srcs[0]].tensor.shape, n.attrs["axes"])
        same = [k for k, kern in enumerate(plan.kernels)
                if space in (kern.space, row_space(plan.graph, kern))
                and _reductions_in(plan, kern) < MAX_SIBLING_REDUCTIONS]
        for k in _candidates(plan, i) + sorted(same, reverse=True):
            if plan.kernels[k].kind in ("reduce", "matmul") and can_join(plan, k, i) is None:
                _join(plan, k, i)
                return
    _new_kernel(plan, KIND.get(n.op, "reduce"), i)


# Unrelated reductions over the same rows share a kernel (one launch), but not
# without bound: a deep network's per-layer weight gradients would make one
# kernel that grows with depth and is never the same twice.
MAX_SIBLING_REDUCTIONS = 6


def _reductions_in(plan: Plan, kern: Kernel) -> int:
    return sum(1 for i in kern.nodes if plan.graph.nodes[i].op in REDUCE)


def _candidates(plan: Plan, i: int) -> list[int]:
    """Kernels computing an operand of i directly, latest first."""
    ks = {plan.home[s] for s in plan.graph.nodes[i].srcs if s in plan.home}
    return sorted(ks, reverse=True)


def _try_join(plan: Plan, i: int) -> None:
    for k in _candidates(plan, i):
        why = can_join(plan, k, i)
        if why is None:
            _join(plan, k, i)
            return
        src = next(s for s in plan.graph.nodes[i].srcs if plan.home.get(s) == k)
        plan.unfused.append((src, i, why))


def _materialize(plan: Plan, enabled: bool) -> None:
    """Give a pointwise kernel to every value that must be in memory but has none."""
    g = plan.graph
    needed = set(g.outputs)
    for n in g.nodes:
        if n.op in (Op.LOOP, Op.FOREACH):  # operands read as whole buffers
            needed.update(n.srcs)
        if n.op is Op.MATMUL:
            needed.update(s for s in n.srcs if _gathered(g, s))
    if not enabled:
        needed.update(i for i, n in enumerate(g.nodes) if n.op in ELEMENTWISE)
    else:
        needed |= regroup.shared_chains(plan)
    for i in sorted(needed):
        op = g.nodes[i].op
        if i not in plan.home and op not in LEAF - FREE and op not in (Op.GET, Op.LOOP):
            _new_kernel(plan, "pointwise", i)
    if enabled:
        regroup.merge_pointwise(plan)
        regroup.fold_into_matmuls(plan)
        regroup.store_permuted(plan)


def _gathered(g: Graph, i: int) -> bool:
    """Is node i (through casts and views) a concatenation of several tensors?
    A matmul streams such an operand from one buffer: per-lane selects between
    tensors in its K loop cost registers and, pipelined, a shared-memory tile
    per tensor (GPT-2 small's merged q/k/v projection spilled on sm_90)."""
    n = g.nodes[i]
    while n.op in (Op.CAST, Op.RESHAPE, Op.PERMUTE):
        n = g.nodes[n.srcs[0]]
    return n.op is Op.CONCAT and len(n.srcs) > 1


def _mark_outputs(plan: Plan) -> None:
    g = plan.graph
    users = g.users()
    graph_outs = set(g.outputs)
    for k, kern in enumerate(plan.kernels):
        kern.outputs = [i for i in kern.nodes if not isinstance(g.nodes[i].type, tuple) and (
            i in graph_outs or any(plan.home.get(u) != k for u in users[i]))]


def _schedule(plan: Plan) -> list[int]:
    """Kernel launch order: dependencies first; a loop runs where its node is.
    A step is a kernel index, or ~node for a LOOP node."""
    steps: list[int] = []
    done: set[int] = set()
    pending = sorted([(kern.anchor, k) for k, kern in enumerate(plan.kernels)] +
                     [(i, ~i) for i in plan.loops])
    while pending:
        for pos, (_, step) in enumerate(pending):
            if kernel_deps(plan, step) <= done:
                steps.append(step)
                done.add(step)
                pending.pop(pos)
                break
        else:
            raise AssertionError("fusion produced a dependency cycle")
    return steps


def _name_kernels(plan: Plan) -> None:
    g = plan.graph
    for kern in plan.kernels:
        ops = []
        for i in sorted(kern.nodes):
            name = g.nodes[i].op.value
            if name not in ops and not (kern.kind == "gates" and name in GATE_OPS):
                ops.append(name)
        if kern.kind in ATTENTION_KINDS:
            ops = [kern.kind] + [op for op in ops if op not in ("attention", "attention_grad",
                                                                "get")]
        elif kern.kind == "gates":
            ops = ["gates"] + ops
        # at most four ops: the first three and the last (often the activation)
        kern.name = "_".join(ops if len(ops) <= 4 else ops[:3] + ops[-1:])


GATE_OPS = {"matmul", "add", "slice"}
