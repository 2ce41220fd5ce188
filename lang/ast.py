"""The Ember abstract syntax tree: immutable dataclasses, each with a source `Loc`.

All sequences are tuples so that nodes are hashable and safe to share between
passes. Every node except `Program` has a `loc` as its last field; what it
points at:

- names, numbers, `true`/`false`, `...`, `None`: the token;
- other expressions (calls, operators, indexing, tuples, slices) and types:
  the whole expression;
- `Let`, `Return`, `Yield`, `LetFor`: the whole statement (its first line);
  `For`: its header `for v in expr`;
- definitions (`FnDef`, `LayerDef`, `ConstDef`, `ParamDef`, `SubLayerDef`,
  `Arg`): the defined name.

A `Loc` describes one line; a span that continues onto later lines is cut at
the end of its first line.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, fields

from ..ir.loc import Loc


class Node:
    """Base class of all AST nodes (lets `walk` and passes use isinstance)."""

    __slots__ = ()


# ---------------------------------------------------------------- expressions


@dataclass(frozen=True)
class Num(Node):
    """An integer or float literal."""

    value: int | float
    loc: Loc


@dataclass(frozen=True)
class Bool(Node):
    """`true` or `false`."""

    value: bool
    loc: Loc


@dataclass(frozen=True)
class Str(Node):
    """A string literal such as "reflect" (builtin options only), without its quotes."""

    value: str
    loc: Loc


@dataclass(frozen=True)
class Name(Node):
    """A reference to a variable, constant, parameter, layer, dim or builtin."""

    id: str
    loc: Loc


@dataclass(frozen=True)
class BinOp(Node):
    """A binary operation; `op` is the operator text ("+", "@", "//", "<=", ...)."""

    op: str
    lhs: Expr
    rhs: Expr
    loc: Loc


@dataclass(frozen=True)
class UnaryOp(Node):
    """A unary operation; the only one is negation, op "-"."""

    op: str
    operand: Expr
    loc: Loc


@dataclass(frozen=True)
class Call(Node):
    """`fn(args..., name=value...)`; keyword arguments always follow positional ones."""

    fn: Expr
    args: tuple[Expr, ...]
    kwargs: tuple[tuple[str, Expr], ...]
    loc: Loc


@dataclass(frozen=True)
class Slice(Node):
    """`start:stop:step` inside an index; a missing part is None."""

    start: Expr | None
    stop: Expr | None
    step: Expr | None
    loc: Loc


@dataclass(frozen=True)
class EllipsisItem(Node):
    """`...`: inside an index, all remaining axes; in a type (`f32[..., n]`), the
    dims an argument has beyond the named ones; as a call argument
    (`zeros(..., n)`), those dims again. It counts as an expression only so that
    every place that evaluates one reports the misplaced `...` (exprs.py)."""

    loc: Loc


@dataclass(frozen=True)
class NewAxis(Node):
    """`None` inside an index: insert an axis of size 1."""

    loc: Loc


@dataclass(frozen=True)
class Index(Node):
    """`value[item, ...]`."""

    value: Expr
    items: tuple[IndexItem, ...]
    loc: Loc


@dataclass(frozen=True)
class TupleExpr(Node):
    """`(a, b)`, `(a,)`, or `a, b` on the right of `=` / after `return`."""

    items: tuple[Expr, ...]
    loc: Loc


@dataclass(frozen=True)
class Attr(Node):
    """`value.name`, e.g. `fc1.forward`."""

    value: Expr
    name: str
    loc: Loc


Expr = Num | Bool | Str | Name | BinOp | UnaryOp | Call | Index | TupleExpr | Attr | EllipsisItem
IndexItem = Expr | Slice | NewAxis

# ---------------------------------------------------------------------- types

TENSOR_DTYPES = ("f32", "f64", "bf16", "f16", "i32", "i64", "bool")
SCALAR_DTYPES = ("int", "float")


@dataclass(frozen=True)
class TypeAnn(Node):
    """`f32[B, 4*H]` (dims are expressions; `f32[]` is a scalar) or `int`/`float` (dims None).
    At most one dim is an `EllipsisItem` (`f32[..., n]`): see lower.resolve_type."""

    dtype: str
    dims: tuple[Expr, ...] | None
    loc: Loc


# ----------------------------------------------------------------- statements


@dataclass(frozen=True)
class Let(Node):
    """`let a, b = value` (is_new) or the plain assignment `a, b = value`."""

    targets: tuple[str, ...]
    value: Expr
    is_new: bool
    loc: Loc


@dataclass(frozen=True)
class Return(Node):
    """`return a, b`."""

    values: tuple[Expr, ...]
    loc: Loc


@dataclass(frozen=True)
class For(Node):
    """`for var in iter { body }`; iter is `range(n)` or a layer array."""

    var: str
    iter: Expr
    body: tuple[Stmt, ...]
    loc: Loc


@dataclass(frozen=True)
class Yield(Node):
    """`yield a, b`: the last statement of a loop bound by `LetFor`, its per-step outputs."""

    values: tuple[Expr, ...]
    loc: Loc


@dataclass(frozen=True)
class LetFor(Node):
    """`let hs, cs = for t in range(n) { ...; yield h, c }`: each target holds one
    yielded value of every step, stacked as [n, ...]."""

    targets: tuple[str, ...]
    loop: For
    loc: Loc


Stmt = Let | Return | For | Yield | LetFor

# ---------------------------------------------------------------- definitions


@dataclass(frozen=True)
class Arg(Node):
    """A function argument or layer hyperparameter: `name: type`."""

    name: str
    type: TypeAnn
    loc: Loc


@dataclass(frozen=True)
class FnDef(Node):
    """`def name(args) -> ret { body }`; ret is None when no return type is written.
    ret_names holds the results' names when `-> (a: T, b: U)` names them, else ()."""

    name: str
    args: tuple[Arg, ...]
    ret: tuple[TypeAnn, ...] | None
    ret_names: tuple[str, ...]
    body: tuple[Stmt, ...]
    loc: Loc


@dataclass(frozen=True)
class ConstDef(Node):
    """`const NAME = expr`, at top level or in a layer."""

    name: str
    value: Expr
    loc: Loc


@dataclass(frozen=True)
class ParamDef(Node):
    """`param name: type = init` (or `buffer ...`, state that is not trained);
    init is a Name or a Call, or None when omitted."""

    name: str
    type: TypeAnn
    init: Expr | None
    loc: Loc
    trainable: bool = True


@dataclass(frozen=True)
class SubLayerDef(Node):
    """`layer name: Layer(args)[count]`; count is None for a single instance."""

    name: str
    layer: str
    args: tuple[Expr, ...]
    kwargs: tuple[tuple[str, Expr], ...]
    count: Expr | None
    loc: Loc


Member = ConstDef | ParamDef | SubLayerDef | FnDef


@dataclass(frozen=True)
class LayerDef(Node):
    """`layer Name(hparams) { members }`, or `model Name { members }` (is_model)."""

    name: str
    hparams: tuple[Arg, ...]
    members: tuple[Member, ...]
    is_model: bool
    loc: Loc


@dataclass(frozen=True)
class Program(Node):
    """A parsed source file."""

    items: tuple[ConstDef | FnDef | LayerDef, ...]
    file: str
    source: str


def walk(node: Node) -> Iterator[Node]:
    """Yield `node` and every node below it, depth-first, in field order.

    Iterative rather than recursive: long operator chains nest deeply.
    """
    stack: list[object] = [node]
    while stack:
        value = stack.pop()
        if isinstance(value, Node):
            yield value
            children = [getattr(value, field.name) for field in fields(value)]  # type: ignore[arg-type]
            stack.extend(reversed(children))
        elif isinstance(value, tuple):  # tuples of nodes, and (name, expr) kwarg pairs
            stack.extend(reversed(value))
