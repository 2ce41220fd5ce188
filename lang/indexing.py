"""Tensor indexing `x[...]` lowered to SLICE, INDEX, GATHER and RESHAPE.

Static ints and slices become one SLICE (ints then drop their axis), and a
negative step a FLIP after it; a runtime integer scalar (a loop counter, or
`T - 1 - t` and `-1` on a symbolic axis T) becomes INDEX; a single integer tensor of rank
>= 1 gathers rows (`table[ids]`); `None` inserts an axis, `...` fills the rest.
"""

from __future__ import annotations

from typing import Any

from ember.ir.dims import Dim
from ember.ir.loc import DSLError, Loc
from ember.ir.ops import Op

from . import ast
from .exprs import as_tensor, binary, eval_expr
from .values import DimExpr, DimVal, Tensor, describe

FULL = object()  # marks an axis indexed by ':'


def index_tensor(em: Any, x: Tensor, e: ast.Index) -> Tensor:
    items = [_item(em, it) for it in e.items]
    if len(items) == 1 and isinstance(items[0], Tensor) and em.type(items[0]).rank >= 1:
        return em.add(Op.GATHER, (x, items[0]), {}, e.loc)
    shape = em.type(x).shape
    items = _expand_ellipsis(items, len(shape), e.loc)
    items = _from_end(em, items, shape, e.loc)
    per_axis = [it for it in items if it is not None]
    starts, stops, steps = _slice_bounds(shape, per_axis, e.loc)
    if (starts, stops, steps) != ((0,) * len(shape), tuple(shape), (1,) * len(shape)):
        x = em.add(Op.SLICE, (x,), {"starts": starts, "stops": stops, "steps": steps}, e.loc)
    flips = tuple(k for k, it in enumerate(per_axis) if isinstance(it, slice) and
                  (it.step or 1) < 0)
    if flips:
        x = em.add(Op.FLIP, (x,), {"axes": flips}, e.loc)
    for axis in reversed(range(len(per_axis))):
        if isinstance(per_axis[axis], Tensor):
            x = em.add(Op.INDEX, (x, per_axis[axis]), {"axis": axis}, e.loc)
    target = _result_shape(em.type(x).shape, items)
    if target != em.type(x).shape:
        x = em.add(Op.RESHAPE, (x,), {"shape": target}, e.loc)
    return x


def _from_end(em: Any, items: list[Any], shape: tuple[Dim, ...], loc: Loc) -> list[Any]:
    """A negative int index on a symbolic axis, `x[:, -1, :]` on [B, T, D], as the
    run-time index T - 1 (an INDEX op)."""
    axes = iter(shape)
    out = []
    for it in items:
        size = next(axes) if it is not None else None
        if isinstance(it, int) and it < 0 and isinstance(size, str):
            it = as_tensor(em, binary(em, "+", DimVal(size), it, loc), None, loc)
        out.append(it)
    return out


def _item(em: Any, it: Any) -> Any:
    if isinstance(it, ast.Slice):
        parts = [None if p is None else eval_expr(em, p) for p in (it.start, it.stop, it.step)]
        for p, node in zip(parts, (it.start, it.stop, it.step)):
            if node is not None and (not isinstance(p, int) or isinstance(p, bool)):
                raise DSLError(f"slice bounds must be ints, found {describe(p)}", node.loc)
        return slice(*parts)
    if isinstance(it, ast.EllipsisItem):
        return Ellipsis
    if isinstance(it, ast.NewAxis):
        return None
    v = eval_expr(em, it)
    if isinstance(v, (DimVal, DimExpr)):  # x[:, T - 1 - t]: a run-time index
        v = as_tensor(em, v, None, it.loc)
    if isinstance(v, Tensor) and not em.type(v).dtype.is_int:
        raise DSLError(f"tensor indices must be integers, found {em.type(v)}", it.loc)
    if not isinstance(v, (int, Tensor)) or isinstance(v, bool):
        raise DSLError(f"an index must be an int, a slice or an integer tensor, "
                       f"found {describe(v)}", it.loc)
    return v


def _expand_ellipsis(items: list[Any], rank: int, loc: Loc) -> list[Any]:
    used = sum(1 for it in items if it is not None and it is not Ellipsis)
    if used > rank or sum(1 for it in items if it is Ellipsis) > 1:
        raise DSLError(f"too many indices: {used} for a tensor of rank {rank}", loc)
    if Ellipsis in items:
        k = items.index(Ellipsis)
        return items[:k] + [slice(None)] * (rank - used) + items[k + 1:]
    return items + [slice(None)] * (rank - used)


def _slice_bounds(shape: tuple[Dim, ...], per_axis: list[Any], loc: Loc) -> tuple[tuple, ...]:
    starts, stops, steps = [], [], []
    for size, it in zip(shape, per_axis):
        if isinstance(it, slice):
            start, stop, step = _normalize_slice(it, size, loc)
        elif isinstance(it, int):
            start, stop, step = _int_index(it, size, loc), None, 1
            stop = start + 1
        else:
            start, stop, step = 0, size, 1
        starts.append(start)
        stops.append(stop)
        steps.append(step)
    return tuple(starts), tuple(stops), tuple(steps)


def _normalize_slice(s: slice, size: Dim, loc: Loc) -> tuple[int, Dim, int]:
    """(start, stop, step) with a positive step; a negative step selects the
    same elements, which index_tensor then flips."""
    if s.step == 0:
        raise DSLError("slice step cannot be zero", loc)
    if s.start in (None, 0) and s.stop is None and s.step in (None, 1):
        return 0, size, 1
    if s.start is None and s.stop is None and s.step == -1:
        return 0, size, 1
    if not isinstance(size, int):
        raise DSLError(f"the symbolic dimension {size} can only be sliced whole, with ':' or "
                       f"'::-1'", loc)
    picked = range(*s.indices(size))
    if picked.step > 0:
        return picked.start, picked.stop, picked.step
    if not picked:
        return 0, 0, 1
    return picked[-1], picked[0] + 1, -picked.step


def _int_index(i: int, size: Dim, loc: Loc) -> int:
    if isinstance(size, int) and -size <= i < size:
        return i % size
    if not isinstance(size, int) and i >= 0:
        return i
    raise DSLError(f"index {i} is out of range for a dimension of size {size}", loc)


def _result_shape(sliced: tuple[Dim, ...], items: list[Any]) -> tuple[Dim, ...]:
    out: list[Dim] = []
    dims = iter(sliced)
    for it in items:
        if it is None:
            out.append(1)
        elif isinstance(it, slice):
            out.append(next(dims))
        elif isinstance(it, int):
            next(dims)
    return tuple(out)
