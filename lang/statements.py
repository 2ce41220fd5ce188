"""Lowering of statements: let/assignment, and the two kinds of `for`.

`for blk in blocks` (an array of layer instances) is unrolled here, since each
iteration reads different parameters. `for t in range(n)` becomes a LOOP
region: the names the body reassigns are its carried state, the outer tensors
it reads are captured as extra body inputs, and `t` is an i32 scalar. In
`let hs = for t in range(n) { ...; yield h }` the yielded values are the scan's
per-step outputs, stacked [n, ...] by the LOOP itself: no O(n^2) accumulation.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, TypeGuard

from ember.ir.dtypes import DType
from ember.ir.graph import Builder
from ember.ir.loc import DSLError
from ember.ir.ops import Op

from . import ast
from .emitter import MISSING, Emitter
from .exprs import eval_expr, tensor_results
from .values import RUNTIME_DIM_NOTE, DimExpr, Instance, Tensor, as_dim, describe


def run_let(em: Emitter, stmt: ast.Let) -> None:
    value = eval_expr(em, stmt.value)
    for name, v in zip(stmt.targets, _unpack(value, len(stmt.targets), stmt)):
        if not stmt.is_new:
            _check_assignable(em, name, stmt)
        em.vars[name] = v


def _unpack(value: Any, n: int, stmt: ast.Let) -> tuple[Any, ...]:
    if n == 1:
        return (value,)
    if not isinstance(value, tuple) or len(value) != n:
        raise DSLError(f"cannot unpack {describe(value)} into {n} names", stmt.loc)
    return value


def _check_assignable(em: Emitter, name: str, stmt: ast.Let) -> None:
    if name in em.vars:
        return
    if em.find(name) is MISSING:
        raise DSLError(f"assignment to undefined name '{name}'", stmt.loc,
                       f"use 'let {name} = ...' to define it")
    raise DSLError(f"cannot assign to '{name}': only variables of this function can be "
                   f"reassigned", stmt.loc)


def run_for(em: Emitter, stmt: ast.For) -> None:
    it = stmt.iter
    if _is_range(it):
        _range_loop(em, stmt, it, None)
        return
    seq = eval_expr(em, it)
    if not (isinstance(seq, list) and all(isinstance(s, Instance) for s in seq)):
        raise DSLError(f"'for' iterates over range(n) or a layer array, found {describe(seq)}",
                       it.loc)
    before = set(em.vars)
    for inst in seq:
        em.vars[stmt.var] = inst
        _run_block(em, stmt.body)
    for name in set(em.vars) - before:
        del em.vars[name]


def run_let_for(em: Emitter, stmt: ast.LetFor) -> None:
    """`let hs = for t in range(n) { ...; yield h }`: bind each yielded value, stacked."""
    loop, it = stmt.loop, stmt.loop.iter
    if not _is_range(it):
        raise DSLError("per-step outputs need a 'for t in range(n)' loop; a loop over a layer "
                       "array is unrolled, so collect its results with stack(...)", it.loc)
    last = loop.body[-1] if loop.body else None
    if not isinstance(last, ast.Yield):
        raise DSLError(f"a loop bound by 'let {', '.join(stmt.targets)} = for ...' must end "
                       f"with 'yield'", stmt.loc, "for example: let hs = for t in range(T) "
                       "{ h = tanh(x[:, t, :] @ w + h @ u); yield h }")
    ys = _range_loop(em, loop, it, last)
    if len(ys) != len(stmt.targets):
        names = f"{len(stmt.targets)} name" + ("s" if len(stmt.targets) > 1 else "")
        raise DSLError(f"'yield' gives {len(ys)} values per step, 'let' binds {names}",
                       last.loc)
    em.vars.update(zip(stmt.targets, ys))


def _is_range(it: ast.Expr) -> TypeGuard[ast.Call]:
    return isinstance(it, ast.Call) and isinstance(it.fn, ast.Name) and it.fn.id == "range"


def _run_block(em: Emitter, body: tuple[ast.Stmt, ...]) -> None:
    from .lower import run_stmt
    for s in body:
        run_stmt(em, s)


def _range_loop(em: Emitter, stmt: ast.For, it: ast.Call,
                yields: ast.Yield | None) -> tuple[Tensor, ...]:
    """Emit the LOOP; rebind the carried names and return the stacked yields."""
    if len(it.args) != 1 or it.kwargs:
        raise DSLError("range takes one argument, the number of steps", it.loc)
    value = eval_expr(em, it.args[0])
    length = as_dim(value)
    if length is None:
        raise DSLError(f"range(n) needs an int or a dimension, found {describe(value)}",
                       it.args[0].loc, RUNTIME_DIM_NOTE if isinstance(value, DimExpr) else "")
    carried = [n for n in dict.fromkeys(_assigned(stmt.body)) if isinstance(em.find(n), Tensor)]
    body = Emitter(Builder("loop_body"), em.ctx, em.instance, outer=em)
    step = body.add(Op.INPUT, (), {"name": stmt.var, "shape": (), "dtype": DType.I32}, stmt.loc)
    body.vars[stmt.var] = step
    body.step = step
    inits = [em.find(n) for n in carried]
    carry_inputs = [_carry_input(em, body, n, t, stmt) for n, t in zip(carried, inits)]
    _run_block(body, stmt.body[:-1] if yields else stmt.body)
    outs = [_carry_output(em, body, n, t, stmt) for n, t in zip(carried, inits)]
    outs += tensor_results(body, yields) if yields else ()
    inputs = (step.id, *(c.id for c in carry_inputs), *(i.id for _, i in body.captures))
    names = (*carried, *(f"y{j}" for j in range(len(outs) - len(carried))))
    graph = body.builder.build(inputs, tuple(o.id for o in outs), names)
    srcs = (*inits, *(o for o, _ in body.captures))
    loop = em.add(Op.LOOP, srcs, {"length": length, "n_carry": len(carried), "body": graph},
                  stmt.loc)
    gets = [em.add(Op.GET, (loop,), {"index": k}, stmt.loc) for k in range(len(outs))]
    em.vars.update(zip(carried, gets))
    return tuple(gets[len(carried):])


def _carry_input(em: Emitter, body: Emitter, name: str, init: Tensor, stmt: ast.For) -> Tensor:
    t = em.type(init)
    inp = body.add(Op.INPUT, (), {"name": name, "shape": t.shape, "dtype": t.dtype}, stmt.loc)
    body.vars[name] = inp
    return inp


def _carry_output(em: Emitter, body: Emitter, name: str, init: Tensor, stmt: ast.For) -> Tensor:
    out = body.vars[name]
    if not isinstance(out, Tensor) or body.type(out) != em.type(init):
        found = body.type(out) if isinstance(out, Tensor) else describe(out)
        raise DSLError(f"loop variable '{name}' must keep its type {em.type(init)} across "
                       f"iterations, found {found}", stmt.loc)
    return out


def _assigned(body: tuple[ast.Stmt, ...]) -> Iterator[str]:
    """Names reassigned (not let-bound) anywhere in a loop body."""
    for s in body:
        if isinstance(s, ast.Let) and not s.is_new:
            yield from s.targets
        elif isinstance(s, ast.For):
            yield from _assigned(s.body)
