"""Build the AST from lark's parse tree, with a source location on every node.

`AstBuilder` has one method per grammar rule or alias; checks that the grammar
leaves open (dtype names, initializer forms, chained comparisons) raise
located `DSLError`s here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from lark import Token, Transformer_NonRecursive, v_args
from lark.tree import Meta

from ..ir.loc import DSLError, Loc
from . import ast
from .values import MAX_INT_DIGITS

# ------------------------------------------------------------------ locations


def line_loc(file: str, lines: list[str], line: int, col: int, end_col: int) -> Loc:
    source_line = lines[line - 1] if 0 < line <= len(lines) else ""
    return Loc(file, line, col, end_col, source_line)


def token_loc(file: str, lines: list[str], tok: Token, after: bool = False) -> Loc:
    """The token's span, or with `after` the column just past it (for end of file)."""
    if after:
        line, col = tok.end_line or tok.line or 1, tok.end_column or tok.column or 1
        return line_loc(file, lines, line, col, col + 1)
    line, col = tok.line or 1, tok.column or 1
    end_col = tok.end_column if tok.end_line == line and tok.end_column else len(
        lines[line - 1]) + 1
    return line_loc(file, lines, line, col, end_col)


# ---------------------------------------------------------------- AST builder


@dataclass(frozen=True)
class _Kwarg:
    """`name=value` inside a call, before `call_args` splits args from kwargs."""

    name: str
    value: ast.Expr
    loc: Loc


@v_args(meta=True)
class AstBuilder(Transformer_NonRecursive):
    """Builds AST nodes bottom-up from lark's parse tree (one method per rule/alias).

    Non-recursive so that long operator chains (`a + b + ...`, which nest
    deeply) cannot hit Python's recursion limit.
    """

    def __init__(self, file: str, lines: list[str]):
        super().__init__()
        self.file = file
        self.lines = lines

    # -- locations

    def _tok(self, tok: Token) -> Loc:
        return token_loc(self.file, self.lines, tok)

    def _meta(self, meta: Meta) -> Loc:
        """The rule's span; one that continues on later lines is cut at its first line's end."""
        if meta.end_line == meta.line:
            end_col = meta.end_column
        else:
            end_col = len(self.lines[meta.line - 1].rstrip()) + 1
        return line_loc(self.file, self.lines, meta.line, meta.column, end_col)

    def _span(self, start: Loc, end: Loc) -> Loc:
        end_col = end.end_col if end.line == start.line else len(start.source_line.rstrip()) + 1
        return Loc(start.file, start.line, start.col, end_col, start.source_line)

    def _quote(self, meta: Meta) -> str:
        """The rule's source text quoted, with a trailing space, if it fits on one line."""
        if meta.end_line != meta.line:
            return ""
        return f"'{self.lines[meta.line - 1][meta.column - 1 : meta.end_column - 1]}' "

    # -- top level and definitions

    def start(self, meta: Meta, items: list) -> tuple:
        return tuple(item for item in items if item is not None)

    def const_def(self, meta: Meta, children: list) -> ast.ConstDef:
        name, value = children
        return ast.ConstDef(str(name), value, self._tok(name))

    def fn_def(self, meta: Meta, children: list) -> ast.FnDef:
        name, args, ret, body = children
        types = tuple(t for _, t in ret) if ret is not None else None
        return ast.FnDef(str(name), args or (), types, self._result_names(ret or ()), body,
                         self._tok(name))

    def _result_names(self, ret: tuple[tuple[Token | None, ast.TypeAnn], ...]
                      ) -> tuple[str, ...]:
        """The results' names: all of them or none, each once."""
        names = [name for name, _ in ret if name is not None]
        if not names:
            return ()
        if len(names) != len(ret):
            unnamed = next(t for name, t in ret if name is None)
            raise DSLError("name every result or none: this one has no name", unnamed.loc,
                           "write 'name: type', as in '-> (logits: f32[B, C], loss: f32[])'")
        for k, name in enumerate(names):
            if name in names[:k]:
                first = self._tok(names[names.index(name)])
                raise DSLError(f"result '{name}' is named twice", self._tok(name),
                               f"first named at {first}")
        return tuple(str(name) for name in names)

    def args(self, meta: Meta, children: list) -> tuple[ast.Arg, ...]:
        return tuple(children)

    def arg(self, meta: Meta, children: list) -> ast.Arg:
        name, type_ann = children
        return ast.Arg(str(name), type_ann, self._tok(name))

    def ret_type(self, meta: Meta, children: list) -> tuple[tuple[Token | None, ast.TypeAnn], ...]:
        return tuple(children)

    def ret_item(self, meta: Meta, children: list) -> tuple[Token | None, ast.TypeAnn]:
        name, type_ann = children
        return name, type_ann

    def layer_def(self, meta: Meta, children: list) -> ast.LayerDef:
        name, hparams, members = children
        return ast.LayerDef(str(name), hparams or (), members, False, self._tok(name))

    def model_def(self, meta: Meta, children: list) -> ast.LayerDef:
        name, members = children
        return ast.LayerDef(str(name), (), members, True, self._tok(name))

    def layer_body(self, meta: Meta, children: list) -> tuple:
        return tuple(member for member in children if member is not None)

    def param_def(self, meta: Meta, children: list) -> ast.ParamDef:
        name, type_ann, init = children
        if init is not None and not isinstance(init, ast.Name | ast.Call):
            found = init.loc.source_line[init.loc.col - 1 : init.loc.end_col - 1]
            raise DSLError(
                "expected an initializer name or call such as 'zeros' or 'normal(0.02)', "
                f"found '{found}'",
                init.loc,
            )
        return ast.ParamDef(str(name), type_ann, init, self._tok(name))

    def buffer_def(self, meta: Meta, children: list) -> ast.ParamDef:
        p = self.param_def(meta, children)
        return ast.ParamDef(p.name, p.type, p.init, p.loc, trainable=False)

    def sublayer_def(self, meta: Meta, children: list) -> ast.SubLayerDef:
        name, layer, call_args, count = children
        args, kwargs = call_args or ((), ())
        return ast.SubLayerDef(str(name), str(layer), args, kwargs, count, self._tok(name))

    # -- types

    def tensor_type(self, meta: Meta, children: list) -> ast.TypeAnn:
        name, dims = children
        if name in ast.SCALAR_DTYPES:
            raise DSLError(
                f"type '{name}' takes no dimensions; write just '{name}'", self._meta(meta)
            )
        self._check_dtype(name, ast.TENSOR_DTYPES)
        return ast.TypeAnn(str(name), dims or (), self._meta(meta))

    def scalar_type(self, meta: Meta, children: list) -> ast.TypeAnn:
        (name,) = children
        if name in ast.TENSOR_DTYPES:
            raise DSLError(
                f"expected dimensions after '{name}', "
                f"e.g. '{name}[N]' (or '{name}[]' for a scalar)",
                self._tok(name),
            )
        self._check_dtype(name, ast.SCALAR_DTYPES)
        return ast.TypeAnn(str(name), None, self._tok(name))

    def _check_dtype(self, name: Token, allowed: tuple[str, ...]) -> None:
        if name not in allowed:
            choices = ", ".join(ast.TENSOR_DTYPES + ast.SCALAR_DTYPES)
            raise DSLError(f"unknown type '{name}'; expected one of {choices}", self._tok(name))

    # -- statements

    def block(self, meta: Meta, children: list) -> tuple:
        return tuple(stmt for stmt in children if stmt is not None)

    def let_stmt(self, meta: Meta, children: list) -> ast.Let:
        targets, values = children
        return ast.Let(targets, _single_or_tuple(values), True, self._meta(meta))

    def assign_stmt(self, meta: Meta, children: list) -> ast.Let:
        targets, values = children
        return ast.Let(targets, _single_or_tuple(values), False, self._meta(meta))

    def let_for_stmt(self, meta: Meta, children: list) -> ast.LetFor:
        targets, loop = children
        return ast.LetFor(targets, loop, self._meta(meta))

    def yield_stmt(self, meta: Meta, children: list) -> ast.Yield:
        (values,) = children
        return ast.Yield(values.items, self._meta(meta))

    def targets(self, meta: Meta, children: list) -> tuple[str, ...]:
        return tuple(str(name) for name in children)

    def return_stmt(self, meta: Meta, children: list) -> ast.Return:
        (values,) = children
        return ast.Return(values.items, self._meta(meta))

    def for_stmt(self, meta: Meta, children: list) -> ast.For:
        var, iterable, body = children
        header = line_loc(self.file, self.lines, meta.line, meta.column, meta.column + 1)
        return ast.For(str(var), iterable, body, self._span(header, iterable.loc))

    def exprs(self, meta: Meta, children: list) -> ast.TupleExpr:
        return ast.TupleExpr(tuple(children), self._meta(meta))

    def dim_list(self, meta: Meta, children: list) -> tuple:
        dims = tuple(self._ellipsis(child) for child in children)
        dots = [d for d in dims if isinstance(d, ast.EllipsisItem)]
        if len(dots) > 1:
            raise DSLError("a type holds at most one '...', found a second", dots[1].loc,
                           f"the first is at column {dots[0].loc.col}; name the other dims")
        return dims

    # -- expressions

    def compare(self, meta: Meta, children: list) -> ast.BinOp:
        if len(children) > 3:
            raise DSLError(
                f"chained comparison {self._quote(meta)}is not allowed; use parentheses",
                self._tok(children[3]),
            )
        lhs, op, rhs = children
        return ast.BinOp(str(op), lhs, rhs, self._meta(meta))

    def binop(self, meta: Meta, children: list) -> ast.BinOp:
        lhs, op, rhs = children
        return ast.BinOp(str(op), lhs, rhs, self._meta(meta))

    def neg(self, meta: Meta, children: list) -> ast.UnaryOp:
        _, operand = children
        return ast.UnaryOp("-", operand, self._meta(meta))

    def call(self, meta: Meta, children: list) -> ast.Call:
        fn, call_args = children
        args, kwargs = call_args or ((), ())
        return ast.Call(fn, args, kwargs, self._meta(meta))

    def call_args(self, meta: Meta, children: list) -> tuple[tuple, tuple]:
        args: list[ast.Expr] = []
        kwargs: list[tuple[str, ast.Expr]] = []
        for child in map(self._ellipsis, children):
            if isinstance(child, _Kwarg):
                kwargs.append((child.name, child.value))
            elif kwargs:
                raise DSLError("positional argument after keyword argument", child.loc)
            else:
                args.append(child)
        return tuple(args), tuple(kwargs)

    def kwarg(self, meta: Meta, children: list) -> _Kwarg:
        name, value = children
        return _Kwarg(str(name), value, self._tok(name))

    def index(self, meta: Meta, children: list) -> ast.Index:
        value, items = children
        return ast.Index(value, items, self._meta(meta))

    def subscripts(self, meta: Meta, children: list) -> tuple:
        return tuple(self._subscript(child) for child in children)

    def _ellipsis(self, child: Any) -> Any:
        """A bare '...' token (in a type or a call) as its AST node."""
        if isinstance(child, Token) and child.type == "ELLIPSIS":
            return ast.EllipsisItem(self._tok(child))
        return child

    def _subscript(self, child: object) -> ast.IndexItem:
        if isinstance(child, Token):  # the grammar keeps only '...' and 'None' as bare tokens here
            node = ast.EllipsisItem if child.type == "ELLIPSIS" else ast.NewAxis
            return node(self._tok(child))
        return child  # type: ignore[return-value]

    def slice(self, meta: Meta, children: list) -> ast.Slice:
        start, stop, step = children
        return ast.Slice(start, stop, step, self._meta(meta))

    def attr(self, meta: Meta, children: list) -> ast.Attr:
        value, name = children
        return ast.Attr(value, str(name), self._meta(meta))

    def tuple_expr(self, meta: Meta, children: list) -> ast.TupleExpr:
        return ast.TupleExpr(tuple(children), self._meta(meta))

    def number(self, meta: Meta, children: list) -> ast.Num:
        (tok,) = children
        text = str(tok)
        shown = text[:12] + ("..." if len(text) > 12 else "")
        if any(c in text for c in ".eE"):
            if math.isinf(float(text)):
                raise DSLError(f"the number {shown} is too large for a float (about 1.8e308)",
                               self._tok(tok))
            return ast.Num(float(text), self._tok(tok))
        digits = text.lstrip("0") or "0"
        if len(digits) > MAX_INT_DIGITS:
            raise DSLError(f"the number {shown} has {len(digits)} digits; compile-time integers "
                           f"are limited to {MAX_INT_DIGITS} digits", self._tok(tok))
        return ast.Num(int(digits), self._tok(tok))

    def true(self, meta: Meta, children: list) -> ast.Bool:
        return ast.Bool(True, self._tok(children[0]))

    def false(self, meta: Meta, children: list) -> ast.Bool:
        return ast.Bool(False, self._tok(children[0]))

    def string(self, meta: Meta, children: list) -> ast.Str:
        (tok,) = children
        return ast.Str(str(tok)[1:-1], self._tok(tok))

    def name(self, meta: Meta, children: list) -> ast.Name:
        (tok,) = children
        return ast.Name(str(tok), self._tok(tok))


def _single_or_tuple(values: ast.TupleExpr) -> ast.Expr:
    """`a = x` assigns x itself; `a, b = x, y` assigns the tuple (x, y)."""
    return values.items[0] if len(values.items) == 1 else values
