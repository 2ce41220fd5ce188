"""Lowering of expressions to compile-time values and IR nodes.

Python numbers fold at compile time; a number meeting a tensor becomes a CONST
of the tensor's dtype (a float never silently becomes an int); symbolic dims
support `*` and exact `//` so shapes like `B*T` or `D//heads` can be written.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from ember.ir.dtypes import DType
from ember.ir.loc import DSLError, Loc
from ember.ir.ops import COMPARE, Op

from . import ast
from .values import (
    ELLIPSIS_DIMS,
    MAX_INT_DIGITS,
    DimExpr,
    DimVal,
    Instance,
    Method,
    Tensor,
    as_dim,
    describe,
    dim_arith,
    dim_value,
    int_too_large,
    show_number,
)

TENSOR_BINOPS = {"+": Op.ADD, "-": Op.SUB, "*": Op.MUL, "/": Op.DIV, "**": Op.POW,
                 "@": Op.MATMUL, "<": Op.LT, "<=": Op.LE, ">": Op.GT, ">=": Op.GE,
                 "==": Op.EQ, "!=": Op.NE}
PY_BINOPS: dict[str, Callable[[Any, Any], Any]] = {
    "+": operator.add, "-": operator.sub, "*": operator.mul, "/": operator.truediv,
    "//": operator.floordiv, "%": operator.mod, "**": operator.pow, "<": operator.lt,
    "<=": operator.le, ">": operator.gt, ">=": operator.ge, "==": operator.eq,
    "!=": operator.ne}


# Nesting that recurses (calls, indexing, tuples and loop bodies; operator chains
# do not), counted across the functions a call lowers, bounded well inside
# Python's stack (a few frames per level).
MAX_NESTING = 100


@contextmanager
def deeper(em: Any, loc: Loc) -> Iterator[None]:
    """One more level of recursion in the lowering, or a located error."""
    ctx = em.ctx
    if ctx.nesting >= MAX_NESTING:
        raise DSLError(f"nested too deeply: more than {MAX_NESTING} levels of calls, brackets "
                       "and loops, counting calls into user functions", loc)
    ctx.nesting += 1
    try:
        yield
    finally:
        ctx.nesting -= 1


def eval_expr(em: Any, e: ast.Expr) -> Any:
    """The compile-time value of an expression, emitting IR for tensor parts."""
    with deeper(em, e.loc):
        return _RULES[type(e)](em, e)


def _num(em: Any, e: ast.Num) -> Any:
    return e.value


def _name(em: Any, e: ast.Name) -> Any:
    from .builtins import BUILTINS
    v = em.find(e.id)
    if v is _missing():
        if e.id == "inf":  # a literal unless a definition shadows it, as Python's math.inf
            return math.inf
        if e.id in BUILTINS:
            raise DSLError(f"builtin '{e.id}' must be called, e.g. {e.id}(...)", e.loc)
        em.lookup(e.id, e.loc)
    return v


def _missing() -> Any:
    from .emitter import MISSING
    return MISSING


def _tuple(em: Any, e: ast.TupleExpr) -> tuple[Any, ...]:
    return tuple(eval_expr(em, x) for x in e.items)


def _operators(em: Any, e: ast.BinOp | ast.UnaryOp) -> Any:
    """Evaluate a tree of unary and binary operators with an explicit stack, in
    the recursive order (left operand first), so that a 500-term sum or
    `- - ... x` cannot exhaust Python's stack."""
    todo: list[tuple[ast.Expr, bool]] = [(e, False)]
    values: list[Any] = []
    while todo:
        node, operands_done = todo.pop()
        if operands_done and isinstance(node, ast.BinOp):
            rhs = values.pop()
            values.append(binary(em, node.op, values.pop(), rhs, node.loc))
        elif operands_done:
            values.append(negate(em, values.pop(), node.loc))
        elif isinstance(node, ast.BinOp):
            todo += [(node, True), (node.rhs, False), (node.lhs, False)]
        elif isinstance(node, ast.UnaryOp):
            todo += [(node, True), (node.operand, False)]
        else:
            values.append(eval_expr(em, node))
    return values[0]


def negate(em: Any, v: Any, loc: Loc) -> Any:
    """`-v` for a tensor or a number."""
    if isinstance(v, Tensor):
        return em.add(Op.NEG, (v,), {}, loc)
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return -v
    if isinstance(v, (DimVal, DimExpr)):
        return DimExpr("-", 0, v)
    raise DSLError(f"cannot negate {describe(v)}", loc)


def binary(em: Any, op: str, a: Any, b: Any, loc: Loc) -> Any:
    """Apply a binary operator to two values of any kind."""
    if isinstance(a, Tensor) or isinstance(b, Tensor):
        return _tensor_binop(em, op, a, b, loc)
    if any(isinstance(v, (DimVal, DimExpr)) for v in (a, b)):
        return _dim_binop(em, op, a, b, loc)
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and op in PY_BINOPS:
        return _number_binop(op, a, b, loc)
    raise DSLError(f"operator '{op}' does not apply to {describe(a)} and {describe(b)}", loc)


def _dim_binop(em: Any, op: str, a: Any, b: Any, loc: Loc) -> Any:
    """Arithmetic with a dim operand: a Dim when one holds it (`B*T`, `D//4`),
    else a DimExpr (`T - 1`); a comparison is a bool scalar at once."""
    for v in (a, b):
        if not isinstance(v, (DimVal, DimExpr, int, float)) or isinstance(v, bool):
            raise DSLError(f"operator '{op}' does not apply to {describe(a)} and {describe(b)}",
                           loc)
    da, db = as_dim(a), as_dim(b)
    out = dim_arith(op, da, db) if da is not None and db is not None else None
    if out is not None:
        return dim_value(out)
    if op in TENSOR_BINOPS and TENSOR_BINOPS[op] in COMPARE:
        return _tensor_binop(em, op, as_tensor(em, a, None, loc), as_tensor(em, b, None, loc), loc)
    return DimExpr(op, a, b)


def dim_tensor(em: Any, v: DimVal | DimExpr, dtype: DType, loc: Loc) -> Tensor:
    """The run-time value of a dim or a DimExpr as a scalar tensor of `dtype`:
    computed in i32 (in the float dtype if it divides with '/'), then cast."""
    work = em.float_dtype if isinstance(v, DimExpr) and v.floating else DType.I32
    if work.is_float and not dtype.is_float:
        raise DSLError(f"the float value {v} cannot be combined with an integer tensor", loc)
    if isinstance(v, DimVal):
        t = em.add(Op.DIM, (), {"dim": v.dim}, loc)
    else:
        sides = [dim_tensor(em, s, work, loc) if isinstance(s, (DimVal, DimExpr))
                 else em.const(s, work, loc) for s in (v.lhs, v.rhs)]
        t = _tensor_binop(em, v.op, sides[0], sides[1], loc)
    return t if em.type(t).dtype is dtype else em.add(Op.CAST, (t,), {"dtype": dtype}, loc)


def _number_binop(op: str, a: int | float, b: int | float, loc: Loc) -> int | float:
    """Fold arithmetic on compile-time numbers. Results stay real, floats finite
    and ints within MAX_INT_DIGITS; an integer power is sized before it is
    computed, so `9 ** 9 ** 9` fails at once instead of running for hours."""
    text = f"{_operand(a)} {op} {_operand(b)}"
    if op == "**" and isinstance(a, int) and isinstance(b, int) and b > 0 and abs(a) > 1:
        _check_digits(text, b * math.log10(abs(a)), loc)
    try:
        out = PY_BINOPS[op](a, b)
    except ZeroDivisionError:
        raise DSLError(f"division by zero in {text}", loc) from None
    except OverflowError:
        raise DSLError(f"{text} overflows a float (about 1.8e308)", loc) from None
    if isinstance(out, complex):
        raise DSLError(f"{text} is not a real number", loc)
    if int_too_large(out):
        _check_digits(text, math.log10(abs(out)), loc)
    if isinstance(out, float) and math.isinf(out) and math.isfinite(a) and math.isfinite(b):
        raise DSLError(f"{text} overflows a float (about 1.8e308)", loc)
    return out


def _check_digits(text: str, digits: float, loc: Loc) -> None:
    if digits >= MAX_INT_DIGITS:
        raise DSLError(f"{text} is too large (about {digits:.3g} digits); compile-time "
                       f"integers are limited to {MAX_INT_DIGITS} digits", loc)


def _operand(v: int | float) -> str:
    """A number as an operand in a message: `(-8) ** 0.5`, not `-8 ** 0.5`."""
    return f"({show_number(v)})" if v < 0 else show_number(v)


def _tensor_binop(em: Any, op: str, a: Any, b: Any, loc: Loc) -> Tensor:
    if op in ("//", "%"):
        from .builtins import call_builtin
        return call_builtin(em, "floor_divide" if op == "//" else "remainder", [a, b], {}, loc)
    ta, tb = as_tensor(em, a, b, loc), as_tensor(em, b, a, loc)
    return em.add(TENSOR_BINOPS[op], (ta, tb), {}, loc)


def as_tensor(em: Any, v: Any, like: Any, loc: Loc) -> Tensor:
    """v as a tensor; a Python number takes the dtype of the tensor `like`."""
    if isinstance(v, Tensor):
        return v
    if isinstance(v, bool):
        return em.const(v, DType.BOOL, loc)
    if isinstance(v, (DimVal, DimExpr)):  # `x / B`: the run-time value in x's dtype
        alone = em.float_dtype if isinstance(v, DimExpr) and v.floating else DType.I32
        return dim_tensor(em, v, em.type(like).dtype if isinstance(like, Tensor) else alone, loc)
    if not isinstance(v, (int, float)):
        raise DSLError(f"expected a tensor or a number, found {describe(v)}", loc)
    dtype = em.type(like).dtype if isinstance(like, Tensor) else (
        em.float_dtype if isinstance(v, float) else DType.I32)
    if isinstance(v, float) and not dtype.is_float:
        raise DSLError(f"the float {v} cannot be combined with an integer tensor "
                       f"({em.type(like)})", loc)
    return em.const(v, dtype, loc)


def _attr(em: Any, e: ast.Attr) -> Any:
    obj = eval_expr(em, e.value)
    if isinstance(obj, Instance) and e.name in obj.scope:
        return obj.scope[e.name]
    if isinstance(obj, Instance) and e.name in obj.params:
        raise DSLError(f"parameter '{e.name}' of '{obj.path}' is private to its layer", e.loc)
    raise DSLError(f"{describe(obj)} has no member '{e.name}'", e.loc)


def _call(em: Any, e: ast.Call) -> Any:
    from .builtins import call_builtin
    from .lower import call_function
    target = _callee(em, e.fn)
    args = [v for a in e.args for v in _call_arg(em, a)]
    kwargs = {k: eval_expr(em, v) for k, v in e.kwargs}
    if isinstance(target, str):
        return call_builtin(em, target, args, kwargs, e.loc)
    if kwargs:
        raise DSLError(f"function '{target.fn.name}' takes positional arguments only", e.loc)
    results = call_function(em, target, args, e.loc, _prefix(em, target))
    return results[0] if len(results) == 1 else results


def _call_arg(em: Any, a: ast.Expr) -> tuple[Any, ...]:
    """One argument's values: a bare `...` gives the dims the function's `...` matched."""
    if not isinstance(a, ast.EllipsisItem):
        return (eval_expr(em, a),)
    bound = em.find(ELLIPSIS_DIMS)
    if bound is _missing():
        raise DSLError("'...' here stands for the dims a '...' in an argument type matched, "
                       "and this function has none", a.loc,
                       "declare one, as in 'def f(x: f32[..., n])', or name the dims")
    return tuple(dim_value(d) for d in bound)


def _misplaced_ellipsis(em: Any, e: ast.EllipsisItem) -> Any:
    raise DSLError("'...' cannot stand here: it belongs in a type ('f32[..., n]') or, for "
                   "the dims it matched there, among a call's arguments ('zeros(..., n)')",
                   e.loc)


def _callee(em: Any, fn: ast.Expr) -> Method | str:
    """The user function a call expression names, or a builtin's name."""
    from .builtins import BUILTINS
    if isinstance(fn, ast.Name) and em.find(fn.id) is _missing():
        if fn.id in BUILTINS:
            return fn.id
        em.lookup(fn.id, fn.loc, lambda: list(BUILTINS))
    target = eval_expr(em, fn)
    if isinstance(target, Instance):
        if "forward" not in target.fns:
            raise DSLError(f"layer '{target.layer.name}' has no 'forward' to call", fn.loc)
        return Method(target.fns["forward"], target)
    if not isinstance(target, Method):
        raise DSLError(f"{describe(target)} is not callable", fn.loc)
    return target


def _prefix(em: Any, target: Method) -> str:
    """The callee's parameter prefix relative to the caller's instance."""
    if target.instance is None:
        return ""
    here = em.instance.path if em.instance else ""
    there = target.instance.path
    return there if not here else there[len(here) + 1:]


def _index(em: Any, e: ast.Index) -> Any:
    from .indexing import index_tensor
    base = eval_expr(em, e.value)
    if isinstance(base, Tensor):
        return index_tensor(em, base, e)
    item = e.items[0]
    if isinstance(base, (list, tuple)) and len(e.items) == 1:
        k = None if isinstance(item, (ast.Slice, ast.EllipsisItem, ast.NewAxis)) else (
            eval_expr(em, item))
        if isinstance(k, int) and -len(base) <= k < len(base):
            return base[k]
        raise DSLError(f"index must be an int in [-{len(base)}, {len(base)}), found "
                       f"{describe(k) if k is not None else 'a slice'}", e.loc)
    raise DSLError(f"{describe(base)} cannot be indexed", e.loc)


def tensor_results(em: Any, ret: ast.Return | ast.Yield) -> tuple[Tensor, ...]:
    """The tensors a `return` (or a loop's `yield`) gives; a returned tuple is unpacked."""
    values = [eval_expr(em, v) for v in ret.values]
    if len(values) == 1 and isinstance(values[0], tuple):
        values = list(values[0])
    what = "functions return" if isinstance(ret, ast.Return) else "loops yield"
    for v, expr in zip(values, ret.values * len(values)):
        if not isinstance(v, Tensor):
            raise DSLError(f"{what} tensors, found {describe(v)}", expr.loc)
    return tuple(values)


_RULES: dict[type, Callable[[Any, Any], Any]] = {
    ast.Num: _num, ast.Bool: _num, ast.Str: _num, ast.Name: _name, ast.TupleExpr: _tuple,
    ast.UnaryOp: _operators, ast.BinOp: _operators, ast.Attr: _attr, ast.Call: _call,
    ast.Index: _index, ast.EllipsisItem: _misplaced_ellipsis,
}
