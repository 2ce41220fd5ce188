"""einsum (lang/einsum.py) and topk (lang/topk.py) beyond their test_lang_ops cases.

* einsum on the oracle in float64 against torch.einsum (rtol = atol = 1e-12, the
  harness of tests/test_ops_vs_torch.py) over every lowering path: one matmul
  (batched, transposed operands, free letters merged), a sum first, a broadcast
  product (nothing contracted), one operand, implicit output; its gradient on
  the oracle against torch.autograd and finite differences (tests/test_grad_ops.py);
  the broadcast-product path once through the Triton interpreter (the matmul path
  is test_lang_ops's case).
* topk against torch.topk: values always, indices where no values tie; with ties,
  -inf and NaN, our documented order (lowest index first among equals, NaN
  largest), on the oracle and through the kernels.
* the refusals, each a DSLError at the spec string (einsum) or the call (topk).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import test_grad_ops as grad_harness
import test_ops_vs_torch as torch_harness
import test_triton_ops as triton_harness
import torch
from util import compile_src, run_src

from ember.ir.loc import DSLError

normal = torch_harness.normal

EINSUM = [
    ("ij,jk->ik", (3, 4), (4, 5)),
    ("bij,bjk->bik", (2, 3, 4), (2, 4, 5)),
    ("ij,kj->ik", (3, 4), (5, 4)),                     # b transposed
    ("bhqd,bhkd->bhqk", (2, 3, 4, 5), (2, 3, 6, 5)),   # attention scores
    ("ijk,jl->lik", (2, 3, 4), (3, 5)),                # free letters merged, output permuted
    ("ba,b->a", (3, 4), (3,)),                         # vector-matrix
    ("i,i->", (5,), (5,)),                             # dot
    ("ij,jk", (3, 4), (4, 5)),                         # implicit output: "ik"
    ("Ab,bc", (3, 4), (4, 2)),                         # implicit, upper case sorts first
    ("ij,k->jk", (3, 4), (2,)),                        # i summed first, then an outer product
    ("i,j->ij", (3,), (4,)),                           # outer product
    ("bi,bj->bij", (3, 4), (3, 2)),                    # batched outer product
    ("ij->ji", (3, 4), None),
    ("ij->i", (3, 4), None),
    ("ijk->", (2, 3, 4), None),
    ("ji", (3, 4), None),                              # implicit: the transpose
    (" ij , jk -> ki ", (3, 4), (4, 5)),               # spaces, as torch
]


def _einsum_expr(spec: str, b: tuple[int, ...] | None) -> str:
    return f'einsum("{spec}", a, b)' if b else f'einsum("{spec}", a)'


@pytest.mark.parametrize("spec, a, b", EINSUM, ids=[s for s, _, _ in EINSUM])
def test_einsum_matches_torch(spec: str, a: tuple[int, ...], b: tuple[int, ...] | None) -> None:
    inputs = {"a": normal(*a), **({"b": normal(*b)} if b else {})}
    torch_harness.check(torch_harness.case(_einsum_expr(spec, b),
                                           lambda *xs: torch.einsum(spec, *xs), **inputs))


GRAD = [("bij,bjk->bik", (2, 3, 4), (2, 4, 5)), ("ijk,jl->lik", (2, 3, 4), (3, 5)),
        ("ij,k->jk", (3, 4), (2,)), ("i,i->", (5,), (5,)), ("ij->ji", (3, 4), None)]


@pytest.mark.parametrize("spec, a, b", GRAD, ids=[s for s, _, _ in GRAD])
def test_einsum_gradient(spec: str, a: tuple[int, ...], b: tuple[int, ...] | None) -> None:
    shapes = {"a": a, **({"b": b} if b else {})}
    sig = ", ".join(f"{k}: f64[{', '.join(map(str, s))}]" for k, s in shapes.items())
    out = torch.einsum(spec, *[torch.zeros(s) for s in shapes.values()]).shape
    ret = f"f64[{', '.join(map(str, out))}]"
    grad_harness.check(grad_harness.Case(grad_harness.dsl(sig, ret, _einsum_expr(spec, b))))


def test_einsum_broadcast_product_through_the_kernels() -> None:
    triton_harness.check(triton_harness.case('einsum("bi,bj->bij", a, b)', a=normal(9, 33),
                                             b=normal(9, 7)), float64=True)


def test_einsum_with_symbolic_dims() -> None:
    src = ('model M {\n  def forward(x: f32[B, T, 4], w: f32[5, 4]) {\n'
           '    return einsum("btd,ed->bte", x, w)\n  }\n}\n')
    rng = np.random.default_rng(0)
    x, w = rng.standard_normal((2, 3, 4)), rng.standard_normal((5, 4))
    (got,) = run_src(src, {"x": x, "w": w})
    np.testing.assert_allclose(got, np.einsum("btd,ed->bte", x, w), rtol=1e-12, atol=1e-12)


# ---- topk ----------------------------------------------------------------------------

def grid(*shape: int) -> torch_harness.Spec:
    """Distinct values: torch's indices are then the only right ones."""
    return lambda rng: rng.permutation(int(np.prod(shape))).reshape(shape) * 0.01 - 1.0


@pytest.mark.parametrize("expr, torch_fn, x", [
    ("topk(x, 1)", lambda x: torch.topk(x, 1), grid(4, 7)),
    ("topk(x, 7)", lambda x: torch.topk(x, 7), grid(4, 7)),
    ("topk(x, 2, axis=0)", lambda x: torch.topk(x, 2, dim=0), grid(4, 7)),
    ("topk(x, 3, axis=1)", lambda x: torch.topk(x, 3, dim=1), grid(2, 5, 3)),
    ("topk(x, 3)", lambda x: torch.topk(x, 3), torch_harness.ints(1000, 6, 9)),
])
def test_topk_matches_torch(expr: str, torch_fn: Callable[..., Any],
                            x: torch_harness.Spec) -> None:
    torch_harness.check(torch_harness.case(expr, torch_fn, x=x))


def _ties() -> np.ndarray:
    """Rows with ties, -inf (more of them than a round can skip) and a NaN."""
    x = np.round(np.random.default_rng(1).standard_normal((5, 33)) * 1.5)
    x[1, [3, 8, 20]] = -np.inf
    x[2, :] = -np.inf
    x[3, 17] = np.nan
    return x


def _expected(x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Largest first, NaN above everything, the lower index first among equals."""
    key = np.where(np.isnan(x), np.inf, x)
    order = np.lexsort((np.broadcast_to(np.arange(x.shape[1]), x.shape), -key - np.isnan(x)))
    idx = order[:, :k]
    return np.take_along_axis(x, idx, axis=1), idx.astype(np.int32)


def test_topk_order_among_ties() -> None:
    x = _ties()
    values, indices = run_src(
        'model M {\n  def forward(x: f32[5, 33]) { return topk(x, 9) }\n}\n', {"x": x})
    want_v, want_i = _expected(x, 9)
    np.testing.assert_array_equal(values, want_v)
    np.testing.assert_array_equal(indices, want_i)
    torch_v = torch.topk(torch.tensor(x), 9).values.numpy()
    np.testing.assert_array_equal(values, torch_v)  # torch's values agree; its tie order may not


def test_topk_ties_through_the_kernels() -> None:
    triton_harness.check(triton_harness.case("topk(x, 9)", x=lambda rng: _ties()))


def test_topk_values_gradient() -> None:
    """Each chosen value's cotangent lands on its element, as torch.topk's."""
    build = grad_harness.dsl("x: f64[4, 7]", "f64[4, 3]", "v", "    let v, i = topk(x, 3)\n")
    grad_harness.check(grad_harness.Case(build, {"x": "grid"}))


# ---- refusals -------------------------------------------------------------------------

SIG = "a: f32[3, 4], b: f32[4, 5], c: f32[5, 2], s: f32[B, 7], m: bool[3, 4]"
NOTE = "einsum supports one or two operands"


@pytest.mark.parametrize("expr, message", [
    ('einsum("...ij,...jk->...ik", a, b)', "'...' (ellipsis) is not supported"),
    ('einsum("ij,jk,kl->il", a, b, c)', "3 operands given"),
    ('einsum("ii->i", a)', "'i' appears twice in 'ii' (diagonals and traces"),
    ('einsum("ij->ii", a)', "'i' appears twice in 'ii'"),
    ('einsum("ij,jk->ik", a, a)', "'j' has size 4 in operand 0 and 3 in operand 1"),
    ('einsum("ij->k", a)', "the output letter 'k' is in no operand"),
    ('einsum("ijk->i", a)', "operand 0 is f32[3, 4], but 'ijk' names 3 axes"),
    ('einsum("ij,jk->ik", a)', "'ij,jk->ik' names 2 operands, found 1 tensor"),
    ('einsum("i1->i", a)', "'i1->i' must be letters, commas and one '->'"),
    ('einsum("ij->i->i", a)', "must be letters, commas and one '->'"),
])
def test_einsum_refusals_point_at_the_spec(expr: str, message: str) -> None:
    e = _error(expr)
    assert message in e.message
    opening, closing = expr.index('"'), expr.rindex('"')  # the expression starts at column 12
    assert (e.loc.line, e.loc.col, e.loc.end_col) == (3, 12 + opening, 13 + closing)
    assert "^" * (e.loc.end_col - e.loc.col) in e.render()


@pytest.mark.parametrize("expr, message", [
    ("einsum(a, b)", "einsum's first argument is the spec string, found a tensor"),
    ("topk(a, 0)", "topk: k must be in [1, 4] (the size of axis 1), found 0"),
    ("topk(a, 5)", "topk: k must be in [1, 4] (the size of axis 1), found 5"),
    ("topk(a, 2, axis=(0, 1))", "axis must be an int, found"),
    ("topk(a, 2.0)", "k must be an int, found"),
    ("topk(m, 1)", "topk expects a numeric tensor of rank >= 1, found bool[3, 4]"),
    ("topk(s, 1, axis=0)", "topk: axis 0 has the symbolic size B; topk needs a static size"),
])
def test_bad_calls_point_at_the_call(expr: str, message: str) -> None:
    e = _error(expr)
    assert e.message.startswith(message)
    assert (e.loc.line, e.loc.col) == (3, 12)


def _error(expr: str) -> DSLError:
    src = f"model M {{\n  def forward({SIG}) {{\n    return {expr}\n  }}\n}}\n"
    with pytest.raises(DSLError) as e:
        compile_src(src, float64=False)
    return e.value
