"""Compile-time values the lowering manipulates while it walks the AST.

A name in a DSL scope denotes one of: a tensor (an IR value), a Python int or
float (constants, hyperparameters, static dims), a symbolic dimension, a layer
instance or an array of them, a function, or a tuple of these.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from ember.ir import dims
from ember.ir.dims import Dim

from . import ast


@dataclass(frozen=True)
class Tensor:
    """An SSA value of the graph being built."""

    id: int


@dataclass(frozen=True)
class DimVal:
    """A symbolic dimension used as a value, e.g. `zeros(B, H)`; supports * and //."""

    dim: Dim

    def __str__(self) -> str:
        return str(self.dim)


@dataclass
class Instance:
    """A layer instantiated with hyperparameters at a dotted parameter prefix."""

    layer: ast.LayerDef
    path: str
    scope: dict[str, Any] = field(default_factory=dict)
    params: dict[str, ast.ParamDef] = field(default_factory=dict)
    fns: dict[str, ast.FnDef] = field(default_factory=dict)


@dataclass(frozen=True)
class Method:
    """A function bound to the instance it runs in (None for top-level helpers)."""

    fn: ast.FnDef
    instance: Instance | None


@dataclass(frozen=True)
class DimExpr:
    """Arithmetic on dims that no Dim holds (`T - 1`, `B + T`, `T % 2`, `T / 2`).
    Its value is known at run time only: where it meets a tensor it becomes a
    scalar of that tensor's dtype (so `x * (T - 1)` is float), as an index an
    i32. Leaves are DimVals and numbers."""

    op: str
    lhs: Any
    rhs: Any

    @property
    def floating(self) -> bool:
        """Whether the value is a float: a '/' or a float operand, as in Python."""
        return self.op == "/" or any(
            isinstance(v, float) or (isinstance(v, DimExpr) and v.floating)
            for v in (self.lhs, self.rhs))

    def __str__(self) -> str:
        def side(v: Any) -> str:
            return f"({v})" if isinstance(v, DimExpr) else str(v)
        return f"{side(self.lhs)} {self.op} {side(self.rhs)}"


# The scope entry (not a possible name) holding the dims a type's `...` matched
# in the function being lowered, as a tuple of Dims (lower.resolve_type).
ELLIPSIS_DIMS = "..."

# No tensor has a dimension this long (2^40 elements); bounding them keeps
# shape arithmetic within machine integers.
MAX_DIM = 2**40


def as_dim(v: Any) -> Dim | None:
    """The Dim a value denotes, or None if it is not a dimension."""
    if isinstance(v, bool):
        return None
    if isinstance(v, int):
        return v
    if isinstance(v, DimVal):
        return v.dim
    return None


def dim_value(d: Dim) -> int | DimVal:
    return d if isinstance(d, int) else DimVal(d)


# Why `T - 1` cannot be a loop length or a shape entry, for the messages that say so.
RUNTIME_DIM_NOTE = ("a dimension can be multiplied and divided exactly (B*T, D//4); other "
                    "arithmetic on it (T - 1) is known at run time only: it can index and "
                    "scale tensors, but not size a loop or a shape")


def dim_arith(op: str, a: Dim, b: Dim) -> Dim | None:
    """Compile-time arithmetic on dims: `*` and exact `//`; None if unsupported."""
    if op == "*":
        return dims.mul(a, b)
    if op == "//":
        return dims.div(a, b)
    return None


def show_number(v: int | float) -> str:
    """A number as messages print it: a huge int abbreviated to its leading digits."""
    if isinstance(v, int) and v.bit_length() > 64:
        digits = int(v.bit_length() * math.log10(2)) + 1
        return f"{str(v)[:6]}... (about {digits} digits)"
    return str(v)


# Compile-time ints are exact, as in Python, up to this many digits: far beyond
# every dtype, yet cheap to compute with and to print in a message.
MAX_INT_DIGITS = 1000
_INT_LIMIT = 10**MAX_INT_DIGITS


def int_too_large(v: int | float) -> bool:
    return isinstance(v, int) and abs(v) >= _INT_LIMIT


def describe(v: Any) -> str:
    """How a value is named in error messages."""
    if isinstance(v, Instance):
        return f"layer instance '{v.path or 'model'}'"
    if isinstance(v, list):
        return "an array of layer instances"
    if isinstance(v, Method):
        return f"function '{v.fn.name}'"
    if isinstance(v, DimVal):
        return f"dimension {v.dim}"
    if isinstance(v, DimExpr):
        return f"the run-time value {v}"
    if isinstance(v, tuple):
        return f"a tuple of {len(v)} values"
    if isinstance(v, bool):
        return "a boolean"
    if isinstance(v, str):
        return f'the string "{v}"'
    if isinstance(v, (int, float)):
        return f"the number {show_number(v)}"
    return "a tensor"
