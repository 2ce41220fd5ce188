"""Per-step outputs of loops: `let hs = for t in range(T) { ...; yield h }`.

An Elman RNN returns every hidden state [T, B, H] (as torch.nn.RNN's output)
and a loss over all of them. Checked on the oracle in float64 against torch
(rtol 1e-12; gradients 1e-10 of the largest), and through the generated
Triton kernels (the interpreter here) against the oracle, forward and
backward, in float32 (`ember.backends.tolerance`: 1e-4) and float64 (1e-10),
with guarded buffers whose canaries must survive. Bad uses of `yield` are
located errors.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from util import compile_src

from ember import api
from ember.backends import tolerance
from ember.ir.graph import Graph
from ember.ir.loc import DSLError
from ember.lang.emitter import Options
from ember.lang.parser import parse
from ember.runtime.pool import GuardedPool

RNN = """
model Rnn {
  param w_ih: f32[5, 7] = glorot_uniform
  param w_hh: f32[7, 7] = glorot_uniform
  param b: f32[7] = zeros

  def loss(x: f32[B, T, 5], y: f32[T, B, 7]) -> (loss: f32[], hs: f32[T, B, 7], cs: f32[T, B]) {
    let h = zeros(B, 7)
    let hs, cs = for t in range(T) {
      h = tanh(x[:, t, :] @ w_ih + h @ w_hh + b)
      yield h, sum(h, axis=-1)
    }
    return mean((hs - y) ** 2) + mean(cs), hs, cs
  }
}
"""


def _data(dtype: type, batch: int = 3, steps: int = 4) -> tuple[dict, dict]:
    rng = np.random.default_rng(steps)
    inputs = {"x": rng.standard_normal((batch, steps, 5)).astype(dtype),
              "y": rng.standard_normal((steps, batch, 7)).astype(dtype)}
    params = {"w_ih": 0.5 * rng.standard_normal((5, 7)), "w_hh": 0.5 * rng.standard_normal((7, 7)),
              "b": rng.standard_normal(7)}
    return inputs, {k: v.astype(dtype) for k, v in params.items()}


def _torch(inputs: dict, params: dict) -> dict[str, np.ndarray]:
    p = {k: torch.tensor(v, requires_grad=True) for k, v in params.items()}
    x, y = (torch.tensor(inputs[k]) for k in ("x", "y"))
    h, hs = torch.zeros(x.shape[0], 7, dtype=torch.float64), []
    for t in range(x.shape[1]):
        h = torch.tanh(x[:, t] @ p["w_ih"] + h @ p["w_hh"] + p["b"])
        hs.append(h)
    stacked = torch.stack(hs)
    loss = ((stacked - y) ** 2).mean() + stacked.sum(-1).mean()
    loss.backward()
    out = {"loss": loss, "hs": stacked, "cs": stacked.sum(-1)}
    out |= {f"grad.{k}": v.grad for k, v in p.items()}
    return {k: v.detach().numpy() for k, v in out.items()}


def _graph(float64: bool) -> Graph:
    return api.compile_program(parse(RNN, "rnn.ember"), "loss",
                               options=Options(False, float64), grad=True)


def test_stacked_states_and_gradients_match_torch() -> None:
    inputs, params = _data(np.float64)
    got = api.run(_graph(True), inputs, params)
    want = _torch(inputs, params)
    assert list(got) == ["loss", "hs", "cs", "grad.w_ih", "grad.w_hh", "grad.b"]
    for name, w in want.items():
        atol = 1e-10 * np.abs(w).max() if name.startswith("grad.") else 1e-12
        np.testing.assert_allclose(got[name], w, rtol=1e-12, atol=atol, err_msg=name)


@pytest.mark.parametrize("float64", [False, True])
def test_kernels_match_the_oracle(float64: bool, tmp_path) -> None:
    pytest.importorskip("triton")
    from ember.runtime.cache import CodeCache
    from ember.runtime.triton_backend import TritonProgram
    dtype = np.float64 if float64 else np.float32
    inputs, params = _data(dtype, batch=33, steps=3)
    g = _graph(float64)
    pool = GuardedPool()
    got = TritonProgram(g, cache=CodeCache(tmp_path))(inputs, params, pool=pool)
    assert pool.check() == []
    want = api.run(g, inputs, params)
    atol, rtol = tolerance(np.dtype(dtype), "ieee")
    for name in want:
        np.testing.assert_allclose(got[name], want[name], atol=atol, rtol=rtol, err_msg=name)


def test_one_loop_no_quadratic_accumulation() -> None:
    g = compile_src(RNN, "loss")
    ops = [n.op.value for n in g.nodes]
    assert ops.count("loop") == 1 and "where" not in ops


def _body(stmts: str, head: str = "let hs = for t in range(3)") -> str:
    return f"""model M {{
  def forward(x: f32[B, N]) -> f32[3, B, N] {{
    let h = x
    {head} {{
      {stmts}
    }}
    return hs
  }}
}}
"""


@pytest.mark.parametrize("src, message, where", [
    (_body("h = h * 2"), "a loop bound by 'let hs = for ...' must end with 'yield'", (4, 5)),
    (_body("yield h; yield h"), "'yield' is only allowed as the last statement", (5, 7)),
    (_body("yield h, h"), "'yield' gives 2 values per step, 'let' binds 1 name", (5, 7)),
    (_body("yield 1"), "loops yield tensors, found the number 1", (5, 13)),
    (_body("h = h + 1; yield h", "for t in range(3)"), "'yield' is only allowed", (5, 18)),
    (_body("yield h", "let hs = for t in x"), "per-step outputs need a 'for t in range(n)'",
     (4, 23)),
])
def test_misuse_is_a_located_error(src: str, message: str, where: tuple[int, int]) -> None:
    with pytest.raises(DSLError) as e:
        compile_src(src)
    assert message in e.value.message
    assert (e.value.loc.line, e.value.loc.col) == where


def test_yield_outside_a_loop() -> None:
    src = "model M {\n  def forward(x: f32[B]) -> f32[B] {\n    yield x\n    return x\n  }\n}\n"
    with pytest.raises(DSLError, match="'yield' is only allowed") as e:
        compile_src(src)
    assert (e.value.loc.line, e.value.loc.col) == (3, 5)
