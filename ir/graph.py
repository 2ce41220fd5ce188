"""The IR: a typed SSA graph of frozen nodes.

A `Graph` is a tuple of `Node`s in topological order; node `i` defines value
`%i`, and `srcs` name earlier values by index. Leaves (INPUT, PARAM, CONST, ...)
have no srcs, except RAND, which reads the counters of its enclosing loops.
Regions (CALL, LOOP) hold a body `Graph` in `attrs["body"]` and produce a
tuple, read by GET nodes. Nodes are never mutated: passes rebuild a
graph with a `Builder` (see passes/rewrite.py).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from .dims import Shape, fmt
from .dtypes import DType
from .loc import UNKNOWN, DSLError, Loc
from .ops import Op


@dataclass(frozen=True)
class TensorType:
    shape: Shape
    dtype: DType

    @property
    def rank(self) -> int:
        return len(self.shape)

    def __str__(self) -> str:
        return f"{self.dtype}{fmt(self.shape)}"


Type = TensorType | tuple[TensorType, ...]


@dataclass(frozen=True)
class Node:
    op: Op
    srcs: tuple[int, ...]
    attrs: dict[str, Any]
    type: Type
    loc: Loc = UNKNOWN

    @property
    def tensor(self) -> TensorType:
        """This node's type when it is a single tensor (every op but CALL/LOOP)."""
        assert isinstance(self.type, TensorType), f"{self.op} has a tuple type"
        return self.type


@dataclass(frozen=True)
class Graph:
    name: str
    nodes: tuple[Node, ...]
    inputs: tuple[int, ...]
    outputs: tuple[int, ...]
    output_names: tuple[str, ...] = ()

    def __getitem__(self, i: int) -> Node:
        return self.nodes[i]

    def input_names(self) -> tuple[str, ...]:
        return tuple(self.nodes[i].attrs["name"] for i in self.inputs)

    def params(self) -> dict[str, TensorType]:
        """Every parameter this graph reads, by name, including in regions."""
        found: dict[str, TensorType] = {}
        for n in walk_nodes(self):
            if n.op is Op.PARAM:
                found[n.attrs["name"]] = n.tensor
        return found

    def users(self) -> list[list[int]]:
        out: list[list[int]] = [[] for _ in self.nodes]
        for i, n in enumerate(self.nodes):
            for s in n.srcs:
                out[s].append(i)
        return out


def walk_nodes(g: Graph) -> Iterator[Node]:
    """All nodes of g and of the bodies of its regions, depth first."""
    for n in g.nodes:
        yield n
        if "body" in n.attrs:
            yield from walk_nodes(n.attrs["body"])


class ShapeError(Exception):
    """Raised by a shape rule; the Builder turns it into a located DSLError."""


@dataclass
class Builder:
    """Appends nodes, inferring each type with the shape rules, and builds a Graph."""

    name: str
    nodes: list[Node] = field(default_factory=list)

    def add(self, op: Op, srcs: tuple[int, ...] = (), attrs: dict[str, Any] | None = None,
            loc: Loc = UNKNOWN, type: Type | None = None) -> int:
        attrs = attrs or {}
        if type is None:
            type = self.infer(op, srcs, attrs, loc)
        self.nodes.append(Node(op, tuple(srcs), attrs, type, loc))
        return len(self.nodes) - 1

    def infer(self, op: Op, srcs: tuple[int, ...], attrs: dict[str, Any], loc: Loc) -> Type:
        from .shapes import shape_rules
        try:
            return shape_rules[op]([self.nodes[s].type for s in srcs], attrs)
        except ShapeError as e:
            raise DSLError(str(e), loc) from None

    def type_of(self, i: int) -> TensorType:
        return self.nodes[i].tensor

    def build(self, inputs: tuple[int, ...], outputs: tuple[int, ...],
              output_names: tuple[str, ...] = ()) -> Graph:
        names = output_names or tuple(f"out{k}" for k in range(len(outputs)))
        return Graph(self.name, tuple(self.nodes), tuple(inputs), tuple(outputs), names)
