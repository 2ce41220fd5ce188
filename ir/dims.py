"""Dimensions: an int, or a symbolic product such as "B", "B*T" or "16*B".

Symbolic dims stay symbolic through every pass; they are bound to ints only at
run time (from the inputs' shapes or `--dims`). A symbolic dim is a canonical
string: an optional integer coefficient, then symbol names sorted, joined by
'*'. Canonical form makes equality a string compare.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping

Dim = int | str
Shape = tuple[Dim, ...]


def factors(d: Dim) -> tuple[int, tuple[str, ...]]:
    """Split a dim into (integer coefficient, sorted symbol names)."""
    if isinstance(d, int):
        return d, ()
    coef, syms = 1, []
    for part in d.split("*"):
        if part.isdigit():
            coef *= int(part)
        else:
            syms.append(part)
    return coef, tuple(sorted(syms))


def make(coef: int, syms: tuple[str, ...]) -> Dim:
    """The canonical dim for coef * prod(syms)."""
    if not syms or coef == 0:
        return coef
    head = [] if coef == 1 else [str(coef)]
    return "*".join(head + sorted(syms))


def mul(a: Dim, b: Dim) -> Dim:
    (ca, sa), (cb, sb) = factors(a), factors(b)
    return make(ca * cb, sa + sb)


def prod(shape: Shape) -> Dim:
    out: Dim = 1
    for d in shape:
        out = mul(out, d)
    return out


def div(a: Dim, b: Dim) -> Dim | None:
    """a / b when it is exact symbolically, else None."""
    (ca, sa), (cb, sb) = factors(a), factors(b)
    rest = Counter(sa)
    rest.subtract(Counter(sb))
    if cb == 0 or ca % cb or any(v < 0 for v in rest.values()):
        return None
    return make(ca // cb, tuple(rest.elements()))


def symbols(shape: Shape) -> set[str]:
    return {s for d in shape for s in factors(d)[1]}


def bind(d: Dim, env: Mapping[str, int]) -> int:
    """The int value of a dim given values for its symbols (KeyError if unbound)."""
    coef, syms = factors(d)
    return coef * math.prod(env[s] for s in syms)


def bind_shape(shape: Shape, env: Mapping[str, int]) -> tuple[int, ...]:
    return tuple(bind(d, env) for d in shape)


def substitute(d: Dim, env: Mapping[str, int]) -> Dim:
    """Replace the bound symbols of a dim by their values; unbound ones stay."""
    coef, syms = factors(d)
    keep = tuple(s for s in syms if s not in env)
    return make(coef * math.prod(env[s] for s in syms if s in env), keep)


def fmt(shape: Shape) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]"
