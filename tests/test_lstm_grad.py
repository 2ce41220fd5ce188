"""The LSTM's backward through time as generated kernels: one kernel per step
each way, checked against the oracle through the interpreter with canary-
guarded buffers, at hidden sizes 8, 33 and 128."""

from __future__ import annotations

import numpy as np
import pytest
from util import LSTM_STEPS

from ember import api
from ember.backends import tolerance
from ember.ir.graph import Graph
from ember.lang.emitter import Options
from ember.lang.parser import parse
from ember.passes.fuse import fuse
from ember.runtime.cache import CodeCache
from ember.runtime.pool import GuardedPool
from ember.runtime.triton_backend import TritonProgram

pytest.importorskip("triton")
N_IN = 5


def lstm_loss(hidden: int) -> str:
    return f"""
model Cell {{
  param w_ih: f32[{N_IN}, {4 * hidden}] = glorot_uniform
  param w_hh: f32[{hidden}, {4 * hidden}] = glorot_uniform
  param b: f32[{4 * hidden}] = zeros

  def loss(x: f32[B, T, {N_IN}], h0: f32[B, {hidden}], c0: f32[B, {hidden}]) -> f32[] {{
    let h = h0
    let c = c0
{LSTM_STEPS}    return mean(h * h) + mean(c)
  }}
}}
"""


def _graph(hidden: int, float64: bool) -> Graph:
    prog = parse(lstm_loss(hidden), "cell.ember")
    return api.compile_program(prog, "loss", options=Options(False, float64), grad=True,
                               grad_inputs=True)


def test_one_kernel_per_step_each_way() -> None:
    plan = fuse(_graph(8, False))
    forward, backward = (plan.loops[i] for i in sorted(plan.loops))
    assert [k.kind for k in forward.kernels] == ["gates"]
    assert len(backward.kernels) == 1 and backward.kernels[0].kind == "matmul"
    # the input projection and every weight gradient run outside the loops
    assert sum(k.kind == "matmul" for k in plan.kernels) >= 4


@pytest.mark.parametrize("hidden, steps, float64",
                         [(8, 1, False), (33, 3, False), (33, 2, True), (128, 1, False)])
def test_backward_through_time_matches_the_oracle(hidden: int, steps: int, float64: bool,
                                                  tmp_path) -> None:
    g = _graph(hidden, float64)
    dt = np.float64 if float64 else np.float32
    rng = np.random.default_rng(hidden + steps)
    inputs = {"x": rng.standard_normal((3, steps, N_IN)).astype(dt),
              "h0": rng.uniform(-1, 1, (3, hidden)).astype(dt),
              "c0": rng.standard_normal((3, hidden)).astype(dt)}
    params = {k: (0.3 * rng.standard_normal(t.shape)).astype(dt)
              for k, t in g.params().items()}
    pool = GuardedPool()
    got = TritonProgram(g, cache=CodeCache(tmp_path))(inputs, params, pool=pool)
    assert pool.check() == []
    want = api.run(g, inputs, params)
    atol, rtol = (1e-10, 1e-10) if float64 else tolerance(np.dtype(np.float32), "ieee")
    assert set(got) == set(want) and any(k.startswith("grad.x") for k in want)
    for name in want:
        np.testing.assert_allclose(got[name], want[name], atol=atol, rtol=rtol, err_msg=name)
