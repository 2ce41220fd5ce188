"""einsum: Einstein summation written on sum, permute, reshape and one matmul.

A spec such as "bij,bjk->bik" names each operand axis with a letter. With two
operands a letter is *batch* (both inputs and the output), *contracted* (both
inputs, not the output) or *free* (one input and the output); a letter in one
input only and not in the output is summed away first. The operands are laid
out as [batch..., free, contracted] and [batch..., contracted, free] for one
matmul, whose result is reshaped and permuted to the output's order; with
nothing to contract (an outer product) they are multiplied with broadcasting
instead. One operand is summed and permuted. So the oracle, the gradient and
the kernels are those of the primitives. Diagonals ("ii->i"), ellipses and
three or more operands are refused.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from ember.ir import dims
from ember.ir.dims import Dim
from ember.ir.loc import DSLError, Loc
from ember.ir.ops import Op

from .builtins import builtin, tensors
from .values import Tensor, describe

SUPPORTED = ('einsum supports one or two operands, one letter per axis and distinct letters '
             'within an operand, e.g. "bij,bjk->bik", "i,j->ij", "ij->ji", "ij->i"')


@dataclass(frozen=True)
class Spec:
    """The parsed spec: one letter string per operand, and the output's."""

    inputs: tuple[str, ...]
    output: str


@builtin
def einsum(em: Any, loc: Loc, spec: Any, *operands: Any) -> Tensor:
    """torch.einsum(spec, a) or torch.einsum(spec, a, b), within SUPPORTED."""
    if not isinstance(spec, str):
        raise DSLError(f"einsum's first argument is the spec string, found {describe(spec)}",
                       loc)
    xs = tensors(em, operands, "einsum", loc)
    at = _spec_loc(loc, spec)
    s = parse_spec(spec, len(xs), at)
    sizes = _sizes(em, s, xs, at)
    if len(xs) == 1:
        return _arrange(em, xs[0], s.inputs[0], s.output, loc)
    return _contract(em, xs, s, sizes, loc)


def _spec_loc(loc: Loc, spec: str) -> Loc:
    """The span of the spec's string literal, for the caret (the call itself
    when the literal is not on the call's first line)."""
    at = loc.source_line.find(f'"{spec}"', max(loc.col - 1, 0))
    return replace(loc, col=at + 1, end_col=at + len(spec) + 3) if at >= 0 else loc


def parse_spec(spec: str, n_operands: int, loc: Loc) -> Spec:
    """Split and check `spec` for `n_operands` tensors; the output is NumPy's
    implicit one (letters used once, sorted) when there is no '->'."""
    def fail(msg: str) -> DSLError:
        return DSLError(f"einsum: {msg}", loc, SUPPORTED)
    text = spec.replace(" ", "")
    if "." in text:
        raise fail("'...' (ellipsis) is not supported; name every axis with a letter")
    if not 1 <= n_operands <= 2:
        raise fail(f"{n_operands} operands given")
    lhs, arrow, out = text.partition("->")
    terms = tuple(lhs.split(","))
    if not all(c.isascii() and c.isalpha() for c in "".join(terms) + out):
        raise fail(f"'{spec}' must be letters, commas and one '->'")
    if len(terms) != n_operands:
        raise fail(f"'{spec}' names {len(terms)} operands, found {n_operands} "
                   f"tensor{'s' if n_operands > 1 else ''}")
    for term in (*terms, out):
        twice = sorted({c for c in term if term.count(c) > 1})
        if twice:
            raise fail(f"'{twice[0]}' appears twice in '{term}' (diagonals and traces are not "
                       f"supported)")
    used = "".join(terms)
    if not arrow:
        out = "".join(sorted(c for c in set(used) if used.count(c) == 1))
    stray = [c for c in out if c not in used]
    if stray:
        raise fail(f"the output letter '{stray[0]}' is in no operand")
    return Spec(terms, out)


def _sizes(em: Any, s: Spec, xs: tuple[Tensor, ...], loc: Loc) -> dict[str, Dim]:
    """Each letter's size; a letter must have one size in every operand."""
    sizes: dict[str, Dim] = {}
    for k, (term, x) in enumerate(zip(s.inputs, xs)):
        shape = em.type(x).shape
        if len(term) != len(shape):
            raise DSLError(f"einsum: operand {k} is {em.type(x)}, but '{term}' names "
                           f"{len(term)} axes", loc, SUPPORTED)
        for c, d in zip(term, shape):
            if sizes.setdefault(c, d) != d:
                raise DSLError(f"einsum: '{c}' has size {sizes[c]} in operand 0 and {d} in "
                               f"operand {k}", loc)
    return sizes


def _arrange(em: Any, x: Tensor, letters: str, out: str, loc: Loc) -> Tensor:
    """x summed over the letters not in `out`, then permuted to `out`'s order."""
    x, letters = _sum_away(em, x, letters, out, loc)
    return _permute(em, x, tuple(letters.index(c) for c in out), loc)


def _sum_away(em: Any, x: Tensor, letters: str, keep: str, loc: Loc) -> tuple[Tensor, str]:
    axes = tuple(i for i, c in enumerate(letters) if c not in keep)
    if not axes:
        return x, letters
    x = em.add(Op.SUM, (x,), {"axes": axes, "keepdims": False}, loc)
    return x, "".join(c for c in letters if c in keep)


def _contract(em: Any, xs: tuple[Tensor, ...], s: Spec, sizes: dict[str, Dim],
              loc: Loc) -> Tensor:
    (a, la), (b, lb) = (_sum_away(em, x, term, other + s.output, loc)
                        for x, term, other in zip(xs, s.inputs, s.inputs[::-1]))
    batch = "".join(c for c in s.output if c in la and c in lb)
    summed = "".join(c for c in la if c in lb and c not in s.output)
    free_a = "".join(c for c in la if c not in lb)
    free_b = "".join(c for c in lb if c not in la)
    if not summed:  # nothing to contract: a broadcast product
        ta, tb = (_broadcastable(em, x, lx, s.output, loc) for x, lx in ((a, la), (b, lb)))
        return em.add(Op.MUL, (ta, tb), {}, loc)
    ma = _group(em, a, la, batch, (free_a, summed), sizes, loc)
    mb = _group(em, b, lb, batch, (summed, free_b), sizes, loc)
    y = em.add(Op.MATMUL, (ma, mb), {}, loc)
    letters = batch + free_a + free_b
    y = _reshape(em, y, tuple(sizes[c] for c in letters), loc)
    return _permute(em, y, tuple(letters.index(c) for c in s.output), loc)


def _group(em: Any, x: Tensor, letters: str, batch: str, groups: tuple[str, str],
           sizes: dict[str, Dim], loc: Loc) -> Tensor:
    """x as [batch..., prod(groups[0]), prod(groups[1])], a matmul operand."""
    order = batch + groups[0] + groups[1]
    x = _permute(em, x, tuple(letters.index(c) for c in order), loc)
    merged = tuple(dims.prod(tuple(sizes[c] for c in g)) for g in groups)
    return _reshape(em, x, tuple(sizes[c] for c in batch) + merged, loc)


def _broadcastable(em: Any, x: Tensor, letters: str, out: str, loc: Loc) -> Tensor:
    """x permuted to `out`'s order, with size-1 axes for the letters it lacks."""
    x = _permute(em, x, tuple(letters.index(c) for c in out if c in letters), loc)
    shape = iter(em.type(x).shape)
    return _reshape(em, x, tuple(next(shape) if c in letters else 1 for c in out), loc)


def _permute(em: Any, x: Tensor, perm: tuple[int, ...], loc: Loc) -> Tensor:
    if perm == tuple(range(len(perm))):
        return x
    return em.add(Op.PERMUTE, (x,), {"perm": perm}, loc)


def _reshape(em: Any, x: Tensor, shape: tuple[Dim, ...], loc: Loc) -> Tensor:
    if shape == em.type(x).shape:
        return x
    return em.add(Op.RESHAPE, (x,), {"shape": shape}, loc)
