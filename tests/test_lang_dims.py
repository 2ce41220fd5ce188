"""Dim arithmetic and indexing from the end (lang/exprs.py, lang/indexing.py).

`T - 1`, `B + T`, `T % 2` and `T / 2` are run-time scalars (DimExpr): they index
(`x[:, T - 1 - t, :]`), scale (`x * (T - 1)`, `x / B`) and compare; `x[:, -1, :]`
on a symbolic T is the run-time index T - 1; negative slice steps flip. Each case
runs on the oracle in float64 against NumPy on the same inputs (B = 2, T = 5,
bound from the inputs' shapes), through the Triton kernels against the oracle,
and, for float results, its gradient against torch.autograd and finite
differences (the harnesses of tests/test_triton_ops.py and tests/test_grad_ops.py).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import test_grad_ops as grad_harness
import test_triton_ops as triton_harness
from util import run_src

B, T = 2, 5
SIG = "x: f32[B, T, 3], k: i32[B]"


def reverse_weighted(x: np.ndarray) -> np.ndarray:
    return sum(x[:, T - 1 - t, :] * t for t in range(T))


CASES: list[tuple[str, Callable[..., Any]]] = [
    ("x[:, -1, :]", lambda x, k: x[:, -1, :]),
    ("x[:, -2]", lambda x, k: x[:, -2]),
    ("x[-1, T - 2, ::-1]", lambda x, k: x[-1, T - 2, ::-1]),
    ("x / B", lambda x, k: x / B),
    ("x * (T - 1)", lambda x, k: x * (T - 1)),
    ("x / (B * T + 1) - T / 2", lambda x, k: x / (B * T + 1) - T / 2),
    ("x * -T", lambda x, k: x * -T),
    ("k * (T - 1) + k % T - (B + T) // 2", lambda x, k: k * (T - 1) + k % T - (B + T) // 2),
    ("where(k < T - 3, 1.0, 0.0)", lambda x, k: np.where(k < T - 3, 1.0, 0.0)),
    ("x[:, ::-1]", lambda x, k: x[:, ::-1]),
    ("x[:, :, ::-2]", lambda x, k: x[:, :, ::-2]),
    ("x[:, :, 2:0:-1]", lambda x, k: x[:, :, 2:0:-1]),
    ("x[:, :, 0:2:-1]", lambda x, k: x[:, :, 0:2:-1]),
]
LOOP = ("model M {\n  def forward(" + SIG + ") {\n    let y = zeros(B, 3)\n"
        "    for t in range(T) { y = y + x[:, T - 1 - t, :] * to_float(t) }\n"
        "    return y\n  }\n}\n")


def program(expr: str) -> str:
    return f"model M {{\n  def forward({SIG}) {{ return {expr} }}\n}}\n"


def inputs(float64: bool = True) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(7)
    x = rng.standard_normal((B, T, 3))
    return {"x": x if float64 else x.astype(np.float32),
            "k": rng.integers(-9, 10, B).astype(np.int32)}


SOURCES = [pytest.param(program(e), fn, id=e) for e, fn in CASES]
SOURCES.append(pytest.param(LOOP, lambda x, k: reverse_weighted(x), id="x[:, T - 1 - t, :]"))


@pytest.mark.parametrize("src, want", SOURCES)
def test_oracle(src: str, want: Callable[..., Any]) -> None:
    ins = inputs()
    (got,) = run_src(src, ins)
    expected = np.asarray(want(**ins))
    assert got.shape == expected.shape and got.dtype.kind == expected.dtype.kind
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("src, want", SOURCES)
def test_triton(src: str, want: Callable[..., Any]) -> None:
    got, oracle = triton_harness.run_both(src, inputs(float64=False))
    triton_harness.assert_matches(got, oracle)


@pytest.mark.parametrize("src, want", [p for p in SOURCES if "k" not in p.id])
def test_gradient(src: str, want: Callable[..., Any]) -> None:
    grad_harness.check(grad_harness.Case(grad_harness.model(src), {"k": 9}, env={"B": B, "T": T}))
