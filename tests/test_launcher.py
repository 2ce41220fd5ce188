"""Launcher and naming edge cases, each once wrong or crashing (from review):
loop state aliasing outer buffers under buffer reuse, names that collide in
generated code, and constants or shapes that must be rejected up front."""

from __future__ import annotations

import numpy as np
import pytest
from util import compile_src

from ember import api
from ember.ir.loc import DSLError
from ember.runtime.pool import Pool
from ember.runtime.triton_backend import TritonProgram

LOOPS = {
    "capture as carry": "for t in range(T) { a = k }",
    "unchanged carry": "for t in range(T) { b = b }",
    "swap": "for t in range(T) { a, b = b, a }",
    "update": "for t in range(T) { a = a * 2.0 + b }",
}


@pytest.mark.parametrize("steps", [0, 1, 3])
@pytest.mark.parametrize("loop", list(LOOPS))
def test_loop_state_survives_buffer_reuse(loop: str, steps: int) -> None:
    # the plain Pool reuses freed buffers (GuardedPool never does), so a carry
    # still aliasing a freed outer buffer would be overwritten by (x @ w) @ w
    src = f"""model M {{
  def forward(x: f32[B, 4], w: f32[4, 4], y: f32[T]) -> f32[B, 4] {{
    let a = exp(x)
    let b = x * 3.0
    let k = tanh(x)
    {LOOPS[loop]}
    return (x @ w) @ w + a - b
  }}
}}"""
    g = compile_src(src, float64=False)
    rng = np.random.default_rng(0)
    inputs = {"x": rng.standard_normal((3, 4)).astype(np.float32),
              "w": rng.standard_normal((4, 4)).astype(np.float32),
              "y": np.zeros(steps, np.float32)}
    got = TritonProgram(g)(inputs, {}, pool=Pool())["forward"]
    np.testing.assert_allclose(got, api.run(g, inputs, {})["forward"], rtol=1e-4, atol=1e-5)


NAMES = {
    "lowercase dim": ("def forward(x: f32[B, r]) -> f32[B] { return sum(x, axis=1) }",
                      {"x": (3, 5)}, {}),
    "dim named like a block size": ("def forward(x: f32[BLOCK, 4]) { return relu(x) }",
                                    {"x": (3, 4)}, {}),
    "input named like a template local": (
        "def forward(acc: f32[B, 8], w: f32[8, 4]) { return relu(acc @ w) }",
        {"acc": (3, 8), "w": (8, 4)}, {}),
    "loop state named like an intermediate": (
        "def forward(x: f32[3, 4]) { let v5 = x\n for t in range(2) { "
        "v5 = v5 - mean(v5, axis=-1, keepdims=true) + to_float(t) }\n return v5 }",
        {"x": (3, 4)}, {}),
    "input named like an intermediate": (
        "def forward(v3: f32[B, 8], w: f32[8, 4]) { return exp(v3 @ w) + 1.0 }",
        {"v3": (3, 8), "w": (8, 4)}, {}),
}


@pytest.mark.parametrize("name", list(NAMES))
def test_names_never_collide_in_generated_code(name: str) -> None:
    body, shapes, params = NAMES[name]
    g = compile_src(f"model M {{ {body} }}", float64=False)
    rng = np.random.default_rng(1)
    inputs = {k: rng.standard_normal(s).astype(np.float32) for k, s in shapes.items()}
    got = TritonProgram(g)(inputs, params, pool=Pool())
    want = api.run(g, inputs, params)
    for k in want:
        np.testing.assert_allclose(got[k], want[k], rtol=1e-4, atol=1e-5)


def test_parameters_that_sanitize_alike_stay_apart() -> None:
    src = """layer L {
  param w: f32[4] = ones
  def forward(x: f32[B, 4]) { return x * w }
}
model M {
  layer a: L
  param a_w: f32[4] = ones
  def forward(x: f32[B, 4]) -> f32[B, 4] { return a(x) + a_w }
}"""
    g = compile_src(src, float64=False)
    x = np.ones((2, 4), np.float32)
    params = {"a.w": np.full(4, 2.0, np.float32), "a_w": np.full(4, 10.0, np.float32)}
    np.testing.assert_array_equal(TritonProgram(g)({"x": x}, params)["forward"],
                                  np.full((2, 4), 12.0, np.float32))


@pytest.mark.parametrize("body, message", [
    ("return x + 2 ** 2000", "does not fit in f64"),
    ("return x * 1.5 ** 3000", "overflows a float"),
    ("return full(1.0, -3, 2)", "non-negative"),
    ("return max_pool2d(x4, 2, stride=0)", "stride must be at least 1"),
    ("return conv2d(x4, w4, padding=-1)", "padding must be at least 0"),
    ("return max(x[:, 2:2], axis=1)", "empty axis"),
])
def test_bad_constants_and_shapes_are_located_errors(body: str, message: str) -> None:
    src = ("model M { def forward(x: f32[B, 4], x4: f32[B, 1, 4, 4], w4: f32[2, 1, 3, 3]) "
           f"{{ {body} }} }}")
    with pytest.raises(DSLError, match=message) as e:
        compile_src(src)
    assert e.value.loc.line == 1


def test_int_constants_must_fit_their_dtype() -> None:
    with pytest.raises(DSLError, match=r"3000000000 does not fit in i32"):
        compile_src("model M { def forward(i: i32[B]) { return i + 3000000000 } }")


def test_scalar_inputs_and_parameters_keep_their_shape() -> None:
    src = """model M {
  param p: f32[] = ones
  def forward(x: f32[]) -> (f32[], f32[]) { return x, p }
}"""
    g = compile_src(src, float64=False)
    outs = TritonProgram(g)({"x": np.array(2.0, np.float32)}, {"p": np.array(3.0, np.float32)})
    assert [v.shape for v in outs.values()] == [(), ()]
    assert [float(v) for v in outs.values()] == [2.0, 3.0]
