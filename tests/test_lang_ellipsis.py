"""`...` in types: one layer for every rank (issue 10, "rank-specific layers").

A `Dense` declared on `x: f32[..., n_in] -> f32[..., n_out]` is used in one model
on inputs of rank 2, 3 and 4, through a residual `Mlp` whose own `...` passes its
dims on to the inner calls. It is checked

* on the oracle in float64 against torch in float64 (rtol = atol = 1e-12: both
  sides compute in double precision);
* in its gradient with respect to every input and parameter, on the oracle in
  float64, against torch.autograd and finite differences (tests/test_grad_ops.py);
* through the generated Triton kernels (Triton's CPU interpreter here) against the
  oracle in float32, at `ember.backends.tolerance` (1e-4), with guarded buffers
  whose canaries must survive; sizes 3, 5 and 7 leave partial tiles.

Misused, `...` is a located DSLError that says what was expected and found.
"""

from __future__ import annotations

import numpy as np
import pytest
import test_grad_ops as grad_harness
import test_triton_ops as triton_harness
import torch
from util import compile_src

from ember import api
from ember.ir.loc import DSLError
from ember.runtime.pool import GuardedPool
from ember.runtime.triton_backend import TritonProgram

F64 = 1e-12  # rtol = atol of float64 against torch in float64
N, H = 5, 7  # as SRC's consts: the features in and out of the Mlp, its hidden width
SIZES = {"B": 3, "T": 5, "S": 7}

SRC = """
const N = 5
const H = 7
layer Dense(n_in: int, n_out: int) {
  param w: f32[n_in, n_out] = normal(0.5)
  param b: f32[n_out] = normal(0.5)
  def forward(x: f32[..., n_in]) -> f32[..., n_out] {
    return x @ w + b
  }
}
layer Mlp(n: int, h: int) {
  layer up: Dense(n, h)
  layer down: Dense(h, n)
  def forward(x: f32[..., n]) -> f32[..., n] {
    return x + down(tanh(up(x)))
  }
}
model M {
  layer mlp: Mlp(N, H)
  def forward(a: f32[B, N], s: f32[B, T, N], q: f32[B, T, S, N]) -> (
      f32[B, N], f32[B, T, N], f32[B, T, S, N]) {
    return mlp(a), mlp(s), mlp(q)
  }
}
"""

RANKS = {"a": ("B", N), "s": ("B", "T", N), "q": ("B", "T", "S", N)}
PARAMS = {"mlp.up.w": (N, H), "mlp.up.b": (H,), "mlp.down.w": (H, N), "mlp.down.b": (N,)}


def arrays(dtype: type, seed: int = 0) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """(inputs, params) drawn from a standard normal."""
    rng = np.random.default_rng(seed)

    def draw(shape: tuple) -> np.ndarray:
        return rng.standard_normal([SIZES.get(d, d) for d in shape]).astype(dtype)
    return ({k: draw(s) for k, s in RANKS.items()}, {k: draw(s) for k, s in PARAMS.items()})


def torch_mlp(x: torch.Tensor, p: dict[str, torch.Tensor]) -> torch.Tensor:
    hidden = torch.tanh(x @ p["mlp.up.w"] + p["mlp.up.b"])
    return x + hidden @ p["mlp.down.w"] + p["mlp.down.b"]


def test_one_layer_serves_every_rank_as_torch() -> None:
    inputs, params = arrays(np.float64)
    got = api.run(compile_src(SRC), inputs, params)
    tp = {k: torch.tensor(v) for k, v in params.items()}
    for (name, x), out in zip(inputs.items(), got.values()):
        want = torch_mlp(torch.tensor(x), tp).numpy()
        assert out.shape == x.shape, name
        np.testing.assert_allclose(out, want, rtol=F64, atol=F64, err_msg=name)


def test_gradient_through_every_rank() -> None:
    grads = grad_harness.check(grad_harness.Case(grad_harness.model(SRC), env=SIZES))
    assert sorted(grads) == sorted([*RANKS, *PARAMS])


def test_triton_kernels_match_the_oracle() -> None:
    inputs, params = arrays(np.float32)
    g = compile_src(SRC, float64=False)
    want = api.run(g, inputs, params)
    pool = GuardedPool()
    got = TritonProgram(g, fused=True, precision="ieee")(inputs, params, 0, pool=pool)
    assert pool.check() == []
    triton_harness.assert_matches(got, want)


# ---- placement: anywhere in the type, and as a call's dims ---------------------------------

def fn_model(fn: str, call: str, sig: str = "x: f32[B, T, 4]") -> str:
    return f"{fn}\nmodel M {{\n  def forward({sig}) {{\n    return {call}\n  }}\n}}\n"


@pytest.mark.parametrize("shape", ["B, 4", "B, T, S, 4"])
def test_ellipsis_in_the_middle_matches_the_dims_between(shape: str) -> None:
    """Zero or more dims: `f32[b, ..., n]` on [B, 4] and on [B, T, S, 4]."""
    src = fn_model("def swap(x: f32[b, ..., n]) -> f32[n, ..., b] { return transpose(x, 0, -1) }",
                   "swap(x)", f"x: f32[{shape}]")
    dims = shape.split(", ")
    assert compile_src(src).nodes[-1].type.shape == (4, *dims[1:-1], "B")


def test_ellipsis_in_a_call_gives_the_matched_dims() -> None:
    fn = ("def widen(x: f32[..., n]) -> f32[..., 2 * n] "
          "{ return concat(x, ones(..., n), axis=-1) }")
    x = np.random.default_rng(0).standard_normal((2, 3, 4))
    (out,) = api.run(compile_src(fn_model(fn, "widen(x)")), {"x": x}, {}).values()
    np.testing.assert_array_equal(out, np.concatenate([x, np.ones_like(x)], axis=-1))


def test_ellipsis_sizes_a_reshape_at_every_rank() -> None:
    fn = "def heads(x: f32[..., d]) -> f32[..., 2, d // 2] { return reshape(x, ..., 2, d // 2) }"
    g = compile_src(fn_model(fn, "heads(x), heads(v)", "x: f32[B, T, 8], v: f32[8]"))
    assert [g[o].type.shape for o in g.outputs] == [("B", "T", 2, 4), (2, 4)]


# ---- errors -----------------------------------------------------------------------------------

ERRORS = [
    # two in one type: at the second
    (fn_model("def f(x: f32[..., n, ...]) -> f32[..., n] { return x }", "f(x)"),
     "a type holds at most one '...', found a second", (1, 22)),
    # fewer dims than the named ones: at the call
    (fn_model("def f(x: f32[..., a, b, c, d]) -> f32[..., d] { return sum(x, axis=(-4, -3, -2)) }",
              "f(x)"),
     "argument 'x' of 'f' expects a tensor of rank at least 4 (f32[..., ?, ?, ?, ?]), "
     "found f64[B, T, 4]", (4, 12)),
    # a result whose dims are not the ones `...` matched
    (fn_model("def f(x: f32[..., n]) -> f32[..., n] { return sum(x, axis=0) }", "f(x)"),
     "function 'f' declares result f64[B, T, 4], returns f64[T, 4]", (1, 40)),
    # two arguments' `...` must match the same dims
    (fn_model("def f(x: f32[..., n], y: f32[..., n]) -> f32[..., n] { return x + y }",
              "f(x, sum(x, axis=0))"),
     "argument 'y' of 'f' expects f64[B, T, 4], found f64[T, 4]", (4, 12)),
    # an entry's inputs name every dim
    (fn_model("", "x", "x: f32[..., 4]"),
     "the inputs of entry function 'forward' need every dim named; '...' in 'x' only "
     "matches dims where a function is called", (3, 22)),
    # a result's `...` needs an argument's
    (fn_model("def f(x: f32[B, n]) -> f32[..., n] { return x }", "f(sum(x, axis=0))"),
     "'...' in the result type of 'f' stands for the dims an argument's '...' matched, "
     "and no argument has one", (1, 28)),
    (fn_model("def f(x: f32[b, n]) -> f32[b, n] { return x + zeros(..., n) }", "f(sum(x, axis=0))"),
     "'...' here stands for the dims a '...' in an argument type matched, and this "
     "function has none", (1, 53)),
    ("model M {\n  param w: f32[..., 4]\n  def forward(x: f32[4]) { return x @ w }\n}\n",
     "parameter 'w' needs every dim given; '...' only matches dims in a function's "
     "argument types", (2, 16)),
    ("model M {\n  param w: f32[4] = normal(...)\n  def forward(x: f32[4]) { return x + w }\n}\n",
     "'...' cannot stand here: it belongs in a type ('f32[..., n]') or, for the dims it "
     "matched there, among a call's arguments ('zeros(..., n)')", (2, 28)),
]


@pytest.mark.parametrize("src, message, at", ERRORS, ids=[m[:40] for _, m, _ in ERRORS])
def test_misuse_is_located(src: str, message: str, at: tuple[int, int]) -> None:
    with pytest.raises(DSLError) as e:
        compile_src(src)
    assert e.value.message == message
    assert (e.value.loc.line, e.value.loc.col) == at
    assert e.value.render().startswith(f"test.ember:{at[0]}:{at[1]}: error: ")
