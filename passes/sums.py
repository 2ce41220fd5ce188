"""canonical_sums: one spelling for a sum of matmuls, before pattern recognition.

The gates fusion (passes/patterns.py) finds a sum of matmuls with elementwise
terms added after it. torch's LSTM spells its gates with two biases,
`x @ w_ih + b_ih + h @ w_hh + b_hh`, which parses as ((mm + b) + mm) + b: the
matmuls are not one sum, and the step becomes three kernels instead of one.
This pass reassociates each tree of ADDs that holds two or more matmuls so that
the matmuls come first, in their written order, then the other terms, in
theirs: ((mm + mm) + b_ih) + b_hh. The same math then gives the same kernels
whatever the spelling.

A tree is a maximal group of ADDs in which every inner ADD is read only by the
next one (a partial sum read elsewhere stays a term). Trees whose matmuls
already lead are left alone, so no other graph changes. Reassociating floats
changes rounding at the level of one ulp per term, as any reordering compiler
does; the oracle runs the rewritten graph, so kernels and oracle still agree.
"""

from __future__ import annotations

from ember.ir.graph import Builder, Graph, Node
from ember.ir.ops import Op

from .cleanup import dce
from .rewrite import copy_node, map_bodies, map_graph


def canonical_sums(g: Graph) -> Graph:
    """Put the matmul terms of every sum first (regions included)."""
    g = map_bodies(g, canonical_sums)
    users = g.users()
    changed = False
    inner = {i for i, n in enumerate(g.nodes) if n.op is Op.ADD and _absorbed(g, users, i)}
    new: list[int] = []  # new id of each old node, in visiting order

    def visit(b: Builder, n: Node, srcs: tuple[int, ...]) -> int:
        i = len(new)
        terms = _terms(g, inner, i) if n.op is Op.ADD and i not in inner else []
        order = _matmuls_first(g, terms)
        nonlocal changed
        changed |= order != terms
        new.append(_rebuild(b, n, [new[t] for t in order]) if order != terms
                   else copy_node(b, n, srcs))
        return new[-1]
    out = map_graph(g, visit)
    return dce(out) if changed else out  # the old partial sums would read the matmuls


def _absorbed(g: Graph, users: list[list[int]], i: int) -> bool:
    """An ADD read once, by an ADD, and not an output: a partial sum of a tree."""
    return (len(users[i]) == 1 and g.nodes[users[i][0]].op is Op.ADD
            and i not in g.outputs and g.nodes[i].type == g.nodes[users[i][0]].type)


def _terms(g: Graph, inner: set[int], root: int) -> list[int]:
    """The terms of the tree rooted at `root`, left to right (iterative: a long
    written sum nests deeply)."""
    out, todo = [], [root]
    while todo:
        i = todo.pop()
        if i == root or i in inner:
            todo += reversed(g.nodes[i].srcs)
        else:
            out.append(i)
    return out


def _matmuls_first(g: Graph, terms: list[int]) -> list[int]:
    matmuls = [t for t in terms if g.nodes[t].op is Op.MATMUL]
    if len(matmuls) < 2:
        return terms
    return matmuls + [t for t in terms if g.nodes[t].op is not Op.MATMUL]


def _rebuild(b: Builder, n: Node, terms: list[int]) -> int:
    """((t0 + t1) + t2) + ...: every term broadcasts to n's type, so the sum has it."""
    acc = terms[0]
    for t in terms[1:]:
        acc = b.add(Op.ADD, (acc, t), {}, n.loc)
    return acc
