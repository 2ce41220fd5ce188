"""Parameter initializers: what `param w: f32[...] = he_normal` means.

Fans follow the layout Ember uses: a rank-2 weight is [in, out] (used as
`x @ w`), a rank-4 conv weight is [out, in/groups, kh, kw] (as torch), so
fan_in = in * receptive field and fan_out = out * receptive field.
`normal(s)` is N(0, s^2); `uniform(a)` is U(-a, a), `uniform(lo, hi)` U(lo, hi).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from ember.ir.graph import TensorType


def fans(shape: tuple[int, ...]) -> tuple[int, int]:
    if len(shape) == 0:
        return 1, 1
    if len(shape) == 1:
        return shape[0], shape[0]
    if len(shape) == 2:
        return shape[0], shape[1]
    field = math.prod(shape[2:])
    return shape[1] * field, shape[0] * field


def _normal(rng: np.random.Generator, shape: tuple[int, ...], std: float) -> np.ndarray:
    return rng.normal(0.0, std, shape)


def _uniform(rng: np.random.Generator, shape: tuple[int, ...], lo: float,
             hi: float) -> np.ndarray:
    return rng.uniform(lo, hi, shape)


Init = Callable[[np.random.Generator, tuple[int, ...], tuple[float, ...]], np.ndarray]

INITS: dict[str, Init] = {
    "zeros": lambda rng, s, a: np.zeros(s),
    "ones": lambda rng, s, a: np.ones(s),
    "normal": lambda rng, s, a: _normal(rng, s, a[0] if a else 1.0),
    "uniform": lambda rng, s, a: _uniform(rng, s, *((-a[0], a[0]) if len(a) == 1 else
                                                    a if a else (-1.0, 1.0))),
    "glorot_uniform": lambda rng, s, a: _uniform(rng, s, *_sym(math.sqrt(6 / sum(fans(s))))),
    "glorot_normal": lambda rng, s, a: _normal(rng, s, math.sqrt(2 / sum(fans(s)))),
    "he_uniform": lambda rng, s, a: _uniform(rng, s, *_sym(math.sqrt(6 / fans(s)[0]))),
    "he_normal": lambda rng, s, a: _normal(rng, s, math.sqrt(2 / fans(s)[0])),
}


def _sym(bound: float) -> tuple[float, float]:
    return -bound, bound


def check_args(kind: str, args: tuple[float, ...], dtype: np.dtype) -> str | None:
    """Why `kind(*args)` cannot initialize a `dtype` parameter, or None if it can.
    Checked when the model compiles, so a bad spec never reaches a run as a
    NumPy error or a tensor full of inf."""
    top = _largest(dtype)
    if any(not math.isfinite(a) or abs(a) > top for a in args):
        return f"arguments must be finite and within {dtype}'s range (about {top:.3g})"
    if kind == "normal" and args and not 0 <= args[0] <= top / 10:
        # ten standard deviations must still fit, or some draws become inf
        return f"the standard deviation must be in [0, {top / 10:.3g}], found {args[0]:g}"
    if kind == "uniform" and len(args) == 1 and args[0] < 0:
        return f"uniform(a) draws from U(-a, a), so a must be >= 0, found {args[0]:g}"
    if kind == "uniform" and len(args) == 2 and args[0] > args[1]:
        return f"uniform(lo, hi) needs lo <= hi, found {args[0]:g} > {args[1]:g}"
    return None


def _largest(dtype: np.dtype) -> float:
    if dtype.kind == "f":
        return float(np.finfo(dtype).max)
    return float(np.iinfo(dtype).max) if dtype.kind in "iu" else 1.0


def init_params(specs: dict[str, tuple[TensorType, tuple]], seed: int) -> dict[str, np.ndarray]:
    """Fresh values for every parameter, drawn in name order from one seeded generator."""
    rng = np.random.default_rng(seed)
    out = {}
    for name in sorted(specs):
        t, init = specs[name]
        out[name] = INITS[init[0]](rng, tuple(t.shape), init[1:]).astype(t.dtype.np)
    return out
