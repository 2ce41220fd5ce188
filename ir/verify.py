"""The IR verifier, run after every pass in tests.

Checks the invariants every pass must keep: single assignment in topological
order (srcs name earlier nodes only), inputs are INPUT nodes, outputs exist,
and every node's type is what its shape rule says. Region bodies are checked
recursively.
"""

from __future__ import annotations

from .graph import Graph, ShapeError
from .ops import Op
from .shapes import shape_rules


class VerifyError(Exception):
    """The IR broke an invariant: a compiler bug, not a user error."""


def verify(g: Graph) -> Graph:
    """Raise VerifyError if g is malformed; return g so it chains in pipelines."""
    for i, n in enumerate(g.nodes):
        _check_node(g, i)
        if "body" in n.attrs:
            verify(n.attrs["body"])
    for i in g.inputs:
        if not 0 <= i < len(g.nodes) or g.nodes[i].op is not Op.INPUT:
            raise VerifyError(f"{g.name}: input %{i} is not an INPUT node")
    for o in g.outputs:
        if not 0 <= o < len(g.nodes):
            raise VerifyError(f"{g.name}: output %{o} does not exist")
    if len(g.output_names) != len(g.outputs):
        raise VerifyError(f"{g.name}: {len(g.outputs)} outputs but "
                          f"{len(g.output_names)} output names")
    return g


def _check_node(g: Graph, i: int) -> None:
    n = g.nodes[i]
    if any(not 0 <= s < i for s in n.srcs):
        raise VerifyError(f"{g.name}: %{i} ({n.op.value}) uses a value not defined before it: "
                          f"{n.srcs}")
    if n.op is Op.INPUT and i not in g.inputs:
        raise VerifyError(f"{g.name}: INPUT %{i} is not listed in the graph inputs")
    try:
        expected = shape_rules[n.op]([g.nodes[s].type for s in n.srcs], n.attrs)
    except ShapeError as e:
        raise VerifyError(f"{g.name}: %{i} ({n.op.value}) is ill-typed: {e}") from None
    if expected != n.type:
        raise VerifyError(f"{g.name}: %{i} ({n.op.value}) has type {n.type}, "
                          f"its shape rule gives {expected}")
