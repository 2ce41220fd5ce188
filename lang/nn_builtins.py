"""Pooling, conv1d and group_norm, written on the conv/pool primitives.

conv1d is conv2d on an [N, C, 1, L] view; ceil-mode and adaptive pooling pad
or pick windows so the existing pool ops apply; group_norm reshapes channels
into groups and reuses layer_norm's overflow-safe normalization.
"""

from __future__ import annotations

from typing import Any

from ember.ir import dims
from ember.ir.loc import DSLError, Loc
from ember.ir.ops import Op
from ember.ir.shapes import window_out

from .builtins import _int, _pair, _t, builtin, conv2d
from .layout_builtins import _pad_constant
from .norm_builtins import _affine, _normalize_rows
from .values import Tensor


def _spatial(em: Any, x: Tensor, name: str, loc: Loc) -> tuple[int, int]:
    shape = em.type(x).shape
    if len(shape) != 4 or not all(isinstance(d, int) for d in shape[2:]):
        raise DSLError(f"{name} expects [N, C, H, W] with static H and W, found {em.type(x)}",
                       loc)
    return shape[2], shape[3]


# ---- pooling ------------------------------------------------------------------------------

def _pool_builtin(name: str, op: Op) -> None:
    def fn(em: Any, loc: Loc, x: Any, kernel: Any, stride: Any = None, padding: Any = 0,
           ceil_mode: bool = False) -> Tensor:
        x = _t(em, x, loc)
        k = _pair(kernel, "kernel", loc)
        s = k if stride is None else _pair(stride, "stride", loc)
        p = _pair(padding, "padding", loc, least=0)
        attrs = {"kernel": k, "stride": s, "padding": p}
        extra = _ceil_extra(em, x, name, attrs, loc) if ceil_mode else (0, 0)
        if extra == (0, 0):
            return em.add(op, (x,), attrs, loc)
        if op is Op.MAX_POOL2D:
            x = _pad_constant(em, x, [(0, 0), (0, 0), (0, extra[0]), (0, extra[1])],
                              -float("inf"), loc)
            return em.add(op, (x,), attrs, loc)
        return _avg_pool_ceil(em, x, attrs, extra, loc)
    fn.__name__ = name
    builtin(fn)


def _ceil_extra(em: Any, x: Tensor, name: str, attrs: dict[str, Any],
                loc: Loc) -> tuple[int, int]:
    """Rows and columns past the padded input that ceil mode's last window
    reaches. As torch, a last window must start inside the input or its left
    padding."""
    out = []
    for size, k, s, p in zip(_spatial(em, x, name, loc), attrs["kernel"], attrs["stride"],
                             attrs["padding"]):
        floor_n = window_out(size, k, s, p)
        n = -(-(size + 2 * p - k) // s) + 1
        if (n - 1) * s >= size + p:
            n -= 1
        out.append((n - floor_n) * s if n > floor_n else 0)
    return out[0], out[1]


def _avg_pool_ceil(em: Any, x: Tensor, attrs: dict[str, Any], extra: tuple[int, int],
                   loc: Loc) -> Tensor:
    """sum / count per window, as torch: padding counts in `count`, the ceil
    overhang past it does not. Both are averages over the same k x k windows
    of zero-extended tensors, so their ratio is sum / count."""
    (ph, pw), dtype = attrs["padding"], em.type(x).dtype
    n, c, h, w = em.type(x).shape
    pads = [(0, 0), (0, 0), (ph, ph + extra[0]), (pw, pw + extra[1])]
    unpadded = dict(attrs, padding=(0, 0))
    total = em.add(Op.AVG_POOL2D, (_pad_constant(em, x, pads, 0, loc),), unpadded, loc)
    ones = em.add(Op.FULL, (), {"value": 1.0, "shape": (1, 1, h + 2 * ph, w + 2 * pw),
                                "dtype": dtype}, loc)
    mask = _pad_constant(em, ones, [(0, 0), (0, 0), (0, extra[0]), (0, extra[1])], 0, loc)
    count = em.add(Op.AVG_POOL2D, (mask,), unpadded, loc)
    return em.add(Op.DIV, (total, count), {}, loc)


_pool_builtin("max_pool2d", Op.MAX_POOL2D)
_pool_builtin("avg_pool2d", Op.AVG_POOL2D)


@builtin
def adaptive_avg_pool2d(em: Any, loc: Loc, x: Any, output_size: Any) -> Tensor:
    """Average pooling to an `output_size` (an int or a pair) that divides the
    input's H and W: then every window is H/oh x W/ow, an avg_pool2d."""
    x = _t(em, x, loc)
    size = _spatial(em, x, "adaptive_avg_pool2d", loc)
    out = _pair(output_size, "output_size", loc)
    if any(d % o for d, o in zip(size, out)):
        raise DSLError(f"adaptive_avg_pool2d: output size {out} must divide the input's "
                       f"spatial size {size}", loc)
    k = (size[0] // out[0], size[1] // out[1])
    return em.add(Op.AVG_POOL2D, (x,), {"kernel": k, "stride": k, "padding": (0, 0)}, loc)


# ---- convolution and normalization ----------------------------------------------------------

@builtin
def conv1d(em: Any, loc: Loc, x: Any, w: Any, stride: int = 1, padding: int = 0,
           dilation: int = 1, groups: int = 1) -> Tensor:
    """torch's conv1d: x [N, C, L], w [O, C/groups, K], as conv2d on height 1."""
    x, w = _t(em, x, loc), _t(em, w, loc)
    if em.type(x).rank != 3 or em.type(w).rank != 3:
        raise DSLError(f"conv1d expects x [N, C, L] and w [O, C/groups, K], found "
                       f"{em.type(x)} and {em.type(w)}", loc)
    x4, w4 = (em.add(Op.RESHAPE, (t,), {"shape": _tall(em.type(t).shape)}, loc) for t in (x, w))
    y = conv2d(em, loc, x4, w4, (1, _int(stride, "stride", loc)),
               (0, _int(padding, "padding", loc)), (1, _int(dilation, "dilation", loc)), groups)
    n, o, _, length = em.type(y).shape
    return em.add(Op.RESHAPE, (y,), {"shape": (n, o, length)}, loc)


def _tall(shape: tuple[Any, ...]) -> tuple[Any, ...]:
    return shape[:2] + (1,) + shape[2:]


@builtin
def group_norm(em: Any, loc: Loc, x: Any, groups: int, weight: Any, bias: Any,
               eps: float = 1e-5) -> Tensor:
    """torch's group_norm: x [N, C, ...] normalized over each group of C/groups
    channels and all trailing axes (biased variance), then per-channel affine."""
    x = _t(em, x, loc)
    shape = em.type(x).shape
    g = _int(groups, "groups", loc)
    per_group = dims.div(shape[1], g) if len(shape) >= 2 and g >= 1 else None
    if per_group is None:
        raise DSLError(f"group_norm expects [N, C, ...] with C divisible by groups={groups}, "
                       f"found {em.type(x)}", loc)
    rows = em.add(Op.RESHAPE, (x,), {"shape": (shape[0], g, dims.prod((per_group,) +
                                                                     shape[2:]))}, loc)
    normed = em.add(Op.RESHAPE, (_normalize_rows(em, rows, (2,), eps, loc),), {"shape": shape},
                    loc)
    channel = (shape[1],) + (1,) * (len(shape) - 2)
    w, b = (em.add(Op.RESHAPE, (_t(em, p, loc, x),), {"shape": channel}, loc)
            for p in (weight, bias))
    return _affine(em, normed, w, b, loc)
