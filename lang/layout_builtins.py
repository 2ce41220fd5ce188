"""Movement builtins beyond the basics: stack, flip and pad.

All lower to movement primitives (reshape, concat, flip, pad, slice) plus a
`where` for a non-zero pad value, so each is a view the kernels fold into
their loads and its gradient comes from the primitives' rules.
"""

from __future__ import annotations

from typing import Any

from ember.ir.loc import DSLError, Loc
from ember.ir.ops import Op

from .builtins import _axes, _int, _slice_axis, _t, builtin, tensors
from .exprs import as_tensor
from .values import Tensor, describe


@builtin
def stack(em: Any, loc: Loc, *xs: Any, axis: int = 0) -> Tensor:
    """Join equal-shaped tensors along a new axis: stack((a, b), axis=1)."""
    ts = tensors(em, xs, "stack", loc)
    rank = em.type(ts[0]).rank
    if not -rank - 1 <= _int(axis, "axis", loc) <= rank:
        raise DSLError(f"axis {axis} is out of range for stacking rank-{rank} tensors", loc)
    ax = axis % (rank + 1)
    parts = []
    for t in ts:
        if em.type(t).shape != em.type(ts[0]).shape:
            raise DSLError(f"stack needs tensors of one shape, found {em.type(ts[0])} and "
                           f"{em.type(t)}", loc)
        shape = em.type(t).shape
        parts.append(em.add(Op.RESHAPE, (t,), {"shape": shape[:ax] + (1,) + shape[ax:]}, loc))
    return em.add(Op.CONCAT, tuple(parts), {"axis": ax}, loc)


@builtin
def flip(em: Any, loc: Loc, x: Any, axis: Any) -> Tensor:
    """Reverse the order along `axis` (an int or a tuple), as torch.flip."""
    x = _t(em, x, loc)
    axes = tuple(sorted(_axes(em, x, axis, loc)))
    return em.add(Op.FLIP, (x,), {"axes": axes}, loc) if axes else x


@builtin
def pad(em: Any, loc: Loc, x: Any, pads: Any, mode: str = "constant", value: Any = 0) -> Tensor:
    """torch.nn.functional.pad: `pads` = (left, right) for the last axis, then
    (left, right) for the one before, ...; "constant" fills with `value`
    (negative amounts crop), "reflect" mirrors without repeating the edge."""
    x = _t(em, x, loc)
    pairs = _pad_pairs(pads, em.type(x).rank, loc)
    if mode == "constant":
        return _pad_constant(em, x, pairs, value, loc)
    if mode == "reflect":
        for ax, (lo, hi) in enumerate(pairs):
            x = _reflect_axis(em, x, ax, lo, hi, loc) if (lo, hi) != (0, 0) else x
        return x
    raise DSLError(f"pad mode must be \"constant\" or \"reflect\", found {describe(mode)}", loc)


def _pad_pairs(pads: Any, rank: int, loc: Loc) -> list[tuple[int, int]]:
    """Per-axis (low, high) from torch's last-axis-first flat tuple."""
    flat = pads if isinstance(pads, tuple) else (pads,)
    if len(flat) % 2 or len(flat) > 2 * rank:
        raise DSLError(f"pad amounts come in (left, right) pairs, at most one per axis: "
                       f"{len(flat)} for a tensor of rank {rank}", loc)
    amounts = [_int(p, "a pad amount", loc) for p in flat]
    pairs = [(amounts[k], amounts[k + 1]) for k in range(0, len(amounts), 2)][::-1]
    return [(0, 0)] * (rank - len(pairs)) + pairs


def _pad_constant(em: Any, x: Tensor, pairs: list[tuple[int, int]], value: Any,
                  loc: Loc) -> Tensor:
    """PAD fills with zeros; another value is selected where a padded ones
    tensor is 0, so inf and NaN fill values stay exact."""
    lows, highs = tuple(p[0] for p in pairs), tuple(p[1] for p in pairs)
    attrs = {"lows": lows, "highs": highs, "interiors": (0,) * len(pairs)}
    padded = em.add(Op.PAD, (x,), attrs, loc)
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value == 0:
        return padded
    fill = as_tensor(em, value, x, loc)
    dtype = em.type(x).dtype
    ones = em.add(Op.FULL, (), {"value": 1.0, "shape": em.type(x).shape, "dtype": dtype}, loc)
    inside = em.add(Op.NE, (em.add(Op.PAD, (ones,), attrs, loc), em.const(0, dtype, loc)), {},
                    loc)
    return em.add(Op.WHERE, (inside, padded, fill), {}, loc)


def _reflect_axis(em: Any, x: Tensor, ax: int, lo: int, hi: int, loc: Loc) -> Tensor:
    size = em.type(x).shape[ax]
    if not isinstance(size, int) or not (0 <= lo < size and 0 <= hi < size):
        raise DSLError(f"reflect padding ({lo}, {hi}) must be non-negative and less than the "
                       f"size {size} of axis {ax}", loc)
    parts = [x]
    if lo:
        left = _slice_axis(em, x, ax, 1, lo + 1, loc)
        parts.insert(0, em.add(Op.FLIP, (left,), {"axes": (ax,)}, loc))
    if hi:
        right = _slice_axis(em, x, ax, size - 1 - hi, size - 1, loc)
        parts.append(em.add(Op.FLIP, (right,), {"axes": (ax,)}, loc))
    return em.add(Op.CONCAT, tuple(parts), {"axis": ax}, loc)
