"""Index expressions for generated kernels.

An `Ix` is a Triton expression (text) and the set of tile axes it varies over
(e.g. {"m"} for a row index of a matmul tile). Knowing the axes lets a load be
masked by exactly the masks of the axes its offset uses, and lets the writer
know when a value must be broadcast to a full tile. Movement ops are folded
into index arithmetic here: reshape regroups dims, permute reorders them,
broadcast pins size-1 dims to 0, slice scales and shifts.
"""

from __future__ import annotations

from dataclasses import dataclass

from ember.ir import dims
from ember.ir.dims import Dim, Shape


@dataclass(frozen=True)
class Ix:
    text: str
    axes: frozenset[str] = frozenset()

    def __str__(self) -> str:
        return self.text


ZERO = Ix("0")


def dim_name(sym: str) -> str:
    """The variable holding a symbolic dim in generated code. Dims are usually
    capitalized (B, T, D); anything else, or a name of the BLOCK family, gets a
    prefix so it cannot collide with a kernel's or the launcher's own locals."""
    clash = sym.startswith(("BLOCK", "XBLOCK", "RBLOCK")) or not sym.isupper()
    return f"dim_{sym}" if clash else sym


def dim_text(d: Dim) -> str:
    """A dim as a kernel expression: an int literal or a product of dim args."""
    coef, syms = dims.factors(d)
    parts = ([str(coef)] if coef != 1 or not syms else []) + [dim_name(s) for s in syms]
    return " * ".join(parts)


def wrap(t: str) -> str:
    return t if t.replace("_", "").isalnum() else f"({t})"


def add(a: Ix, b: Ix) -> Ix:
    if a.text == "0":
        return b
    if b.text == "0":
        return a
    return Ix(f"{a.text} + {b.text}", a.axes | b.axes)


def mul(a: Ix, d: Dim) -> Ix:
    t = dim_text(d)
    if a.text == "0" or t == "0":
        return ZERO
    if t == "1":
        return a
    return Ix(f"{wrap(a.text)} * {wrap(t)}", a.axes)


def floordiv(a: Ix, d: Dim) -> Ix:
    return a if d == 1 else Ix(f"{wrap(a.text)} // {wrap(dim_text(d))}", a.axes)


def mod(a: Ix, d: Dim) -> Ix:
    return ZERO if d == 1 else Ix(f"{wrap(a.text)} % {wrap(dim_text(d))}", a.axes)


def strides(shape: Shape) -> list[Dim]:
    """Row-major strides of a contiguous buffer."""
    out: list[Dim] = []
    acc: Dim = 1
    for d in reversed(shape):
        out.append(acc)
        acc = dims.mul(acc, d)
    return list(reversed(out))


def linear(idx: tuple[Ix, ...], shape: Shape) -> Ix:
    """The row-major offset of a multi-index into a contiguous buffer."""
    out = ZERO
    for i, st in zip(idx, strides(shape)):
        # a size-1 dim still contributes its index: for a tile axis that index
        # is 0 on the valid lanes, and keeping it keeps the axis (and its mask)
        out = add(out, mul(i, st))
    return out


def delinear(flat: Ix, shape: Shape) -> tuple[Ix, ...]:
    """Split a row-major flat index into one index per dim."""
    out: list[Ix] = []
    rest = flat
    for k in reversed(range(len(shape))):
        if k == 0:
            out.append(rest)  # 0 on valid lanes even for a size-1 dim; keeps the axis
        else:
            out.append(mod(rest, shape[k]))
            rest = floordiv(rest, shape[k])
    return tuple(reversed(out))


def reshape_index(idx: tuple[Ix, ...], out_shape: Shape, src_shape: Shape) -> tuple[Ix, ...]:
    """Index into src for an index into reshape(src, out_shape). Dims are grouped
    so that dims both shapes share map straight through without div/mod."""
    if 0 in out_shape or 0 in src_shape:  # empty: no lane reads it
        return (ZERO,) * len(src_shape)
    result: list[Ix] = []
    for gi, gj in _groups(out_shape, src_shape):
        sub_out = tuple(out_shape[k] for k in gi)
        sub_src = tuple(src_shape[k] for k in gj)
        sub_idx = tuple(idx[k] for k in gi)
        if sub_out == sub_src:
            result.extend(sub_idx)
        else:
            result.extend(delinear(linear(sub_idx, sub_out), sub_src))
    return tuple(result) + (ZERO,) * (len(src_shape) - len(result))


def _groups(a: Shape, b: Shape) -> list[tuple[list[int], list[int]]]:
    """Consecutive groups of dims of a and b with equal products (size-1 dims
    left over at the end of either shape form no group)."""
    groups: list[tuple[list[int], list[int]]] = []
    i = j = 0
    while i < len(a) and j < len(b):
        gi, gj, pa, pb = [i], [j], a[i], b[j]
        i, j = i + 1, j + 1
        while pa != pb:
            if _proper_divisor(pa, pb) and i < len(a):
                gi.append(i)
                pa, i = dims.mul(pa, a[i]), i + 1
            else:
                gj.append(j)
                pb, j = dims.mul(pb, b[j]), j + 1
        groups.append((gi, gj))
    return groups


def _proper_divisor(a: Dim, b: Dim) -> bool:
    q = dims.div(b, a)
    return q is not None and q != 1


def broadcast_index(idx: tuple[Ix, ...], out_shape: Shape, src_shape: Shape) -> tuple[Ix, ...]:
    """Index into an operand broadcast (NumPy rules) to out_shape."""
    lead = len(out_shape) - len(src_shape)
    return tuple(ZERO if d == 1 else idx[lead + k] for k, d in enumerate(src_shape))
