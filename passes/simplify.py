"""fold_constants and simplify: local rewrites, one rule a line of intent.

`fold_constants` evaluates elementwise ops whose operands are all scalar
constants, using the oracle's own rules (one meaning per op). `simplify` applies
the (pattern, rewrite) rules below; a rule returns the id that replaces the
node, or None. A rewrite is kept only when the replacement has exactly the
node's type, so no rule can change a shape or dtype by accident.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ember.ir.graph import Builder, Graph, Node
from ember.ir.ops import ELEMENTWISE, Op

from .rewrite import copy_node, map_bodies, map_graph


def fold_constants(g: Graph) -> Graph:
    """Replace elementwise ops on scalar CONSTs by the CONST they compute."""
    from ember.runtime.oracle import Ctx, eval_rules

    def visit(b: Builder, n: Node, srcs: tuple[int, ...]) -> int:
        operands = [b.nodes[s] for s in srcs]
        if n.op in ELEMENTWISE and srcs and all(o.op is Op.CONST for o in operands):
            args = [np.array(o.attrs["value"], o.attrs["dtype"].np) for o in operands]
            with np.errstate(all="ignore"):  # exp(1000.0) folds to inf as it would run
                value = np.asarray(eval_rules[n.op](n, args, Ctx({}, {}, 0))).item()
            return b.add(Op.CONST, (), {"value": value, "dtype": n.tensor.dtype}, n.loc)
        return copy_node(b, n, srcs)
    return map_graph(map_bodies(g, fold_constants), visit)


Rule = Callable[[Builder, Node, tuple[int, ...]], "int | None"]


def _const_value(b: Builder, i: int) -> float | None:
    n = b.nodes[i]
    return n.attrs["value"] if n.op is Op.CONST else None


def _identity_operand(unit: float, sides: tuple[int, ...]) -> Rule:
    """x op unit -> x, for the operand positions in `sides` holding the unit."""
    def rule(b: Builder, n: Node, srcs: tuple[int, ...]) -> int | None:
        for k in sides:
            if _const_value(b, srcs[k]) == unit:
                return srcs[1 - k]
        return None
    return rule


def _involution(b: Builder, n: Node, srcs: tuple[int, ...]) -> int | None:
    # neg(neg(x)) -> x
    inner = b.nodes[srcs[0]]
    return inner.srcs[0] if inner.op is n.op else None


def _same_shape_noop(b: Builder, n: Node, srcs: tuple[int, ...]) -> int | None:
    # reshape/expand/cast of x to x's own type -> x
    return srcs[0] if b.nodes[srcs[0]].type == n.type else None


def _reshape_chain(b: Builder, n: Node, srcs: tuple[int, ...]) -> int | None:
    # reshape(reshape(x)) -> reshape(x), or x itself when the chain restores x's shape
    inner = b.nodes[srcs[0]]
    if inner.op is Op.RESHAPE:
        x = inner.srcs[0]
        return x if b.nodes[x].type == n.type else b.add(Op.RESHAPE, (x,), n.attrs, n.loc)
    return _same_shape_noop(b, n, srcs)


def _permute_chain(b: Builder, n: Node, srcs: tuple[int, ...]) -> int | None:
    # permute(permute(x, p), q) -> permute(x, p[q]); identity permute -> x
    perm, inner = n.attrs["perm"], b.nodes[srcs[0]]
    if perm == tuple(range(len(perm))):
        return srcs[0]
    if inner.op is Op.PERMUTE:
        composed = tuple(inner.attrs["perm"][p] for p in perm)
        if composed == tuple(range(len(composed))):
            return inner.srcs[0]
        return b.add(Op.PERMUTE, inner.srcs, {"perm": composed}, n.loc)
    return None


def _constant_choice(b: Builder, n: Node, srcs: tuple[int, ...]) -> int | None:
    # where(true, x, y) -> x, where(false, x, y) -> y (kept only at where's own type)
    c = _const_value(b, srcs[0])
    return None if c is None else srcs[1] if c else srcs[2]


def _relu_idempotent(b: Builder, n: Node, srcs: tuple[int, ...]) -> int | None:
    # relu(relu(x)) -> relu(x)
    return srcs[0] if b.nodes[srcs[0]].op is Op.RELU else None


SIMPLIFY_RULES: dict[Op, list[Rule]] = {
    Op.ADD: [_identity_operand(0.0, (0, 1))],       # x + 0 -> x
    Op.SUB: [_identity_operand(0.0, (1,))],         # x - 0 -> x
    Op.MUL: [_identity_operand(1.0, (0, 1))],       # x * 1 -> x
    Op.DIV: [_identity_operand(1.0, (1,))],         # x / 1 -> x
    Op.NEG: [_involution],
    Op.RELU: [_relu_idempotent],
    Op.RESHAPE: [_reshape_chain],
    Op.EXPAND: [_same_shape_noop],
    Op.CAST: [_same_shape_noop],
    Op.PERMUTE: [_permute_chain],
    Op.WHERE: [_constant_choice],
}


def simplify(g: Graph) -> Graph:
    """Apply SIMPLIFY_RULES once over the graph (regions included)."""
    def visit(b: Builder, n: Node, srcs: tuple[int, ...]) -> int:
        for rule in SIMPLIFY_RULES.get(n.op, []):
            mark = len(b.nodes)
            new = rule(b, n, srcs)
            if new is not None and b.nodes[new].type == n.type:
                return new
            del b.nodes[mark:]  # a rejected rewrite leaves no trace
        return copy_node(b, n, srcs)
    return map_graph(map_bodies(g, simplify), visit)
