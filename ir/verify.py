"""The IR verifier, run after every pass in tests.

Checks the invariants every pass must keep: single assignment in topological
order (srcs name earlier nodes only), inputs are INPUT nodes, outputs exist,
and every node's type is what its shape rule says. Region bodies are checked
recursively, and against their node: a CALL's body takes exactly its srcs; a
LOOP (scan) body takes the step counter (i32[]), the carried values, one step
of each per-step input (xs without their leading [length] axis), then the
captured ones, and returns new carried values of the same types, then its
per-step outputs. An attention op's score region takes the score tile (and,
for the backward, its cotangent), then the captured operands.
"""

from __future__ import annotations

from collections.abc import Sequence

from .dtypes import DType
from .graph import Graph, Node, ShapeError, TensorType, Type
from .ops import ATTENTION_OPS, ELEMENTWISE, Op
from .shapes import foreach_body_inputs, score_inputs, shape_rules


class VerifyError(Exception):
    """The IR broke an invariant: a compiler bug, not a user error."""


def verify(g: Graph) -> Graph:
    """Raise VerifyError if g is malformed; return g so it chains in pipelines."""
    for i in g.inputs:
        if not 0 <= i < len(g.nodes) or g.nodes[i].op is not Op.INPUT:
            raise VerifyError(f"{g.name}: input %{i} is not an INPUT node")
    for i, n in enumerate(g.nodes):
        _check_node(g, i)
        if "body" in n.attrs:
            verify(n.attrs["body"])
            _check_region(g, i)
    for o in g.outputs:
        if not 0 <= o < len(g.nodes):
            raise VerifyError(f"{g.name}: output %{o} does not exist")
        if not isinstance(g.nodes[o].type, TensorType):
            raise VerifyError(f"{g.name}: output %{o} is a tuple; read it with GET")
    if len(g.output_names) != len(g.outputs):
        raise VerifyError(f"{g.name}: {len(g.outputs)} outputs but "
                          f"{len(g.output_names)} output names")
    return g


def _check_node(g: Graph, i: int) -> None:
    n = g.nodes[i]
    where = f"{g.name}: %{i} ({n.op.value})"
    if any(not 0 <= s < i for s in n.srcs):
        raise VerifyError(f"{where} uses a value not defined before it: {n.srcs}")
    if n.op is Op.INPUT and i not in g.inputs:
        raise VerifyError(f"{g.name}: INPUT %{i} is not listed in the graph inputs")
    for s in n.srcs:
        is_tuple = not isinstance(g.nodes[s].type, TensorType)
        if is_tuple != (n.op is Op.GET):
            raise VerifyError(f"{where} reads %{s} of type {g.nodes[s].type}: only GET reads "
                              f"the tuple a region produces, and GET reads nothing else")
    try:
        expected = shape_rules[n.op]([g.nodes[s].type for s in n.srcs], n.attrs)
    except ShapeError as e:
        raise VerifyError(f"{where} is ill-typed: {e}") from None
    except Exception as e:  # a malformed node (missing attr, bad index) is also a bug
        raise VerifyError(f"{where} is malformed: {type(e).__name__}: {e}") from None
    if expected != n.type:
        raise VerifyError(f"{where} has type {n.type}, its shape rule gives {expected}")


def _check_region(g: Graph, i: int) -> None:
    """The body's inputs match what the region node passes it."""
    n = g.nodes[i]
    body: Graph = n.attrs["body"]
    where = f"{g.name}: %{i} ({n.op.value})"
    passed = [g.nodes[s].type for s in n.srcs]
    if n.op is Op.LOOP:
        passed = _scan_passes(n, passed, body, where)
    elif n.op in ATTENTION_OPS:
        passed = list(score_inputs(n.op, [g.nodes[s].tensor for s in n.srcs]))
    elif n.op is Op.FOREACH:
        passed = list(foreach_body_inputs([g.nodes[s].tensor for s in n.srcs], n.attrs))
        _check_elementwise(body, where)
    received = [body.nodes[b].type for b in body.inputs]
    if received != passed:
        raise VerifyError(f"{where} passes {_types(passed)} but its body takes "
                          f"{_types(received)}")


def _check_elementwise(body: Graph, where: str) -> None:
    """A foreach region is one scalar function: elementwise ops and constants."""
    for k, m in enumerate(body.nodes):
        if m.op not in ELEMENTWISE | {Op.INPUT, Op.CONST} or m.tensor.shape != ():
            raise VerifyError(f"{where}: its region's %{k} ({m.op.value} {m.type}) is not "
                              f"an elementwise op on scalars")


def _scan_passes(n: Node, passed: list[Type], body: Graph, where: str) -> list[Type]:
    """What a scan's body must take, after checking its carries and xs."""
    k, nx = n.attrs.get("n_carry", -1), n.attrs.get("n_xs", 0)
    if not 0 <= k <= len(body.outputs) or k + nx > len(n.srcs):
        raise VerifyError(f"{where} has n_carry={k}, n_xs={nx} but {len(n.srcs)} srcs "
                          f"and its body returns {len(body.outputs)}")
    outs = [body.nodes[o].type for o in body.outputs[:k]]
    if outs != passed[:k]:
        raise VerifyError(f"{where} carries {_types(passed[:k])} but its body returns "
                          f"{_types(outs)}")
    steps = []
    for t in passed[k:k + nx]:
        if not isinstance(t, TensorType) or not t.shape or t.shape[0] != n.attrs["length"]:
            raise VerifyError(f"{where}: per-step input {t} is not stacked along its length "
                              f"{n.attrs['length']}")
        steps.append(TensorType(t.shape[1:], t.dtype))
    return [TensorType((), DType.I32), *passed[:k], *steps, *passed[k + nx:]]


def _types(ts: Sequence[object]) -> str:
    return "(" + ", ".join(map(str, ts)) + ")"

