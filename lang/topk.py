"""topk: the k largest values along an axis and their indices, in k rounds.

Round r takes, among the elements not yet taken, the largest value (a NaN
counts as larger than any number, as in torch) at its lowest index, then marks
that element taken. Ties therefore go to the lower index; torch documents no
order among equal values. The value is selected with `where` and summed out,
so its gradient reaches exactly the chosen element, as torch.topk's does, and
the indices carry none. k rounds over an axis of n elements cost O(k n) work
and k times the ops in the graph: meant for small k.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ember.ir.dtypes import DType
from ember.ir.loc import DSLError, Loc
from ember.ir.ops import Op

from .builtins import _axes, _int, _t, builtin
from .values import Tensor


@builtin
def topk(em: Any, loc: Loc, x: Any, k: int, axis: int = -1) -> tuple[Tensor, Tensor]:
    """(values, i32 indices) of the k largest along `axis`, largest first."""
    x = _t(em, x, loc)
    ax = _axis_of(em, x, axis, loc)
    n = em.type(x).shape[ax]
    if not isinstance(n, int):
        raise DSLError(f"topk: axis {ax} has the symbolic size {n}; topk needs a static size",
                       loc)
    if not 1 <= _int(k, "k", loc) <= n:
        raise DSLError(f"topk: k must be in [1, {n}] (the size of axis {ax}), found {k}", loc)
    iota = em.add(Op.IOTA, (), {"shape": em.type(x).shape, "axis": ax, "dtype": DType.I32},
                  loc)
    taken: Tensor | None = None
    values, indices = [], []
    for _ in range(k):
        value, index, taken = _pick(em, x, taken, iota, ax, loc)
        values.append(value)
        indices.append(index)
    return _join(em, values, ax, loc), _join(em, indices, ax, loc)


def _axis_of(em: Any, x: Tensor, axis: Any, loc: Loc) -> int:
    t = em.type(x)
    if t.dtype is DType.BOOL or t.rank == 0:
        raise DSLError(f"topk expects a numeric tensor of rank >= 1, found {t}", loc)
    return _axes(em, x, _int(axis, "axis", loc), loc)[0]


def _pick(em: Any, x: Tensor, taken: Tensor | None, iota: Tensor, ax: int,
          loc: Loc) -> tuple[Tensor, Tensor, Tensor]:
    """One round: the largest untaken value, its lowest index, and `taken`
    with that element added (None: nothing taken yet)."""
    t = em.type(x)
    rest = x if taken is None else em.add(
        Op.WHERE, (taken, em.const(_lowest(t.dtype), t.dtype, loc), x), {}, loc)
    top = em.add(Op.MAX, (rest,), {"axes": (ax,), "keepdims": True}, loc)
    free = em.add(Op.OR, (em.add(Op.EQ, (rest, top), {}, loc),
                          em.add(Op.NE, (rest, rest), {}, loc)), {}, loc)  # or NaN
    if taken is not None:
        free = em.add(Op.AND, (free, em.add(Op.NOT, (taken,), {}, loc)), {}, loc)
    past_end = em.const(t.shape[ax], DType.I32, loc)
    index = em.add(Op.MIN, (em.add(Op.WHERE, (free, iota, past_end), {}, loc),),
                   {"axes": (ax,), "keepdims": True}, loc)
    hot = em.add(Op.EQ, (iota, index), {}, loc)
    picked = em.add(Op.WHERE, (hot, x, em.const(0, t.dtype, loc)), {}, loc)
    value = em.add(Op.SUM, (picked,), {"axes": (ax,), "keepdims": True}, loc)
    return value, index, hot if taken is None else em.add(Op.OR, (taken, hot), {}, loc)


def _lowest(dtype: DType) -> float | int:
    """What a taken element is replaced by: no untaken value is below it."""
    return -np.inf if dtype.is_float else int(np.iinfo(dtype.np).min)


def _join(em: Any, parts: list[Tensor], ax: int, loc: Loc) -> Tensor:
    return parts[0] if len(parts) == 1 else em.add(Op.CONCAT, tuple(parts), {"axis": ax}, loc)
