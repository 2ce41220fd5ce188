"""Fusion does not depend on how a sum is spelled (passes/sums.py).

torch's two-bias LSTM gates `x @ w_ih + b_ih + h @ w_hh + b_hh`, and other
orders of the same terms, give the kernels of `x @ w_ih + h @ w_hh + b`: one
gates kernel for the cell (forward; the same count with gradients), one per
step in a scan. The rewritten cell still matches torch in float64 (values
1e-12, gradients 1e-10 of the largest) and its kernels match the oracle
through the Triton interpreter (float32: 1e-4). The pass itself only touches
sums of two or more matmuls, and keeps a partial sum read elsewhere as a term.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from util import compile_src

from ember import api
from ember.backends import tolerance
from ember.ir.printer import print_graph
from ember.lang.emitter import Options
from ember.lang.parser import parse
from ember.passes.fuse import fuse
from ember.passes.sums import canonical_sums
from ember.runtime.pool import GuardedPool

SPELLINGS = ["x @ w_ih + h @ w_hh + b_ih",
             "x @ w_ih + b_ih + h @ w_hh + b_hh",
             "h @ w_hh + b_hh + x @ w_ih + b_ih",
             "b_ih + h @ w_hh + x @ w_ih",
             "(x @ w_ih + b_ih) + (h @ w_hh + b_hh)"]
PARAMS = """  param w_ih: f32[5, 32] = glorot_uniform
  param w_hh: f32[8, 32] = glorot_uniform
  param b_ih: f32[32] = zeros
  param b_hh: f32[32] = zeros
"""
CELL_STEP = """    let i, f, g, o = split(gates, 4, axis=-1)
    let c2 = sigmoid(f) * c + sigmoid(i) * tanh(g)
    let h2 = sigmoid(o) * tanh(c2)
"""


def cell(gates: str) -> str:
    return f"""model Cell {{
{PARAMS}
  def forward(x: f32[B, 5], h: f32[B, 8], c: f32[B, 8]) -> (f32[B, 8], f32[B, 8]) {{
    let gates = {gates}
{CELL_STEP}    return h2, c2
  }}
  def loss(x: f32[B, 5], h: f32[B, 8], c: f32[B, 8]) -> f32[] {{
    let gates = {gates}
{CELL_STEP}    return mean(h2 * h2) + mean(c2)
  }}
}}
"""


def scan(gates: str) -> str:
    return f"""model Lstm {{
{PARAMS}
  def forward(xs: f32[B, T, 5]) -> f32[B, 8] {{
    let h = zeros(B, 8)
    let c = zeros(B, 8)
    for t in range(T) {{
      let x = xs[:, t, :]
      let gates = {gates}
      let i, f, g, o = split(gates, 4, axis=-1)
      c = sigmoid(f) * c + sigmoid(i) * tanh(g)
      h = sigmoid(o) * tanh(c)
    }}
    return h
  }}
}}
"""


def _kinds(src: str, entry: str = "forward", grad: bool = False) -> list[object]:
    plan = fuse(api.compile_program(parse(src, "m.ember"), entry, grad=grad))
    loops = [sorted(k.kind for k in plan.loops[i].kernels) for i in sorted(plan.loops)]
    return [sorted(k.kind for k in plan.kernels), loops]


@pytest.mark.parametrize("gates", SPELLINGS[1:])
def test_every_spelling_gives_the_same_kernels(gates: str) -> None:
    assert _kinds(cell(gates)) == _kinds(cell(SPELLINGS[0])) == [["gates"], []]
    assert _kinds(cell(gates), "loss", grad=True) == _kinds(cell(SPELLINGS[0]), "loss", grad=True)
    assert _kinds(scan(gates)) == _kinds(scan(SPELLINGS[0]))
    assert _kinds(scan(gates))[1] == [["gates"]]


def _data(dtype: type) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    rng = np.random.default_rng(7)
    inputs = {"x": rng.standard_normal((33, 5)), "h": rng.uniform(-1, 1, (33, 8)),
              "c": rng.standard_normal((33, 8))}
    params = {"w_ih": 0.4 * rng.standard_normal((5, 32)),
              "w_hh": 0.4 * rng.standard_normal((8, 32)),
              "b_ih": rng.standard_normal(32), "b_hh": rng.standard_normal(32)}
    return ({k: v.astype(dtype) for k, v in inputs.items()},
            {k: v.astype(dtype) for k, v in params.items()})


def _torch_loss(inputs: dict[str, np.ndarray], params: dict[str, np.ndarray]
                ) -> dict[str, np.ndarray]:
    p = {k: torch.tensor(v, requires_grad=True) for k, v in params.items()}
    x, h, c = (torch.tensor(inputs[k]) for k in ("x", "h", "c"))
    i, f, g, o = (x @ p["w_ih"] + p["b_ih"] + h @ p["w_hh"] + p["b_hh"]).chunk(4, -1)
    c2 = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    h2 = torch.sigmoid(o) * torch.tanh(c2)
    loss = (h2 * h2).mean() + c2.mean()
    loss.backward()
    out = {"loss": loss.detach()} | {f"grad.{k}": v.grad for k, v in p.items()}
    return {k: np.asarray(v) for k, v in out.items()}


def test_two_bias_cell_matches_torch() -> None:
    inputs, params = _data(np.float64)
    g = api.compile_program(parse(cell(SPELLINGS[1]), "m.ember"), "loss",
                            options=Options(False, True), grad=True)
    got = api.run(g, inputs, params)
    for name, want in _torch_loss(inputs, params).items():
        np.testing.assert_allclose(got[name], want, rtol=1e-12,
                                   atol=1e-12 if name == "loss" else 1e-10 * np.abs(want).max(),
                                   err_msg=name)


def test_two_bias_gates_kernel_matches_the_oracle(tmp_path) -> None:
    pytest.importorskip("triton")
    from ember.runtime.cache import CodeCache
    from ember.runtime.triton_backend import TritonProgram
    inputs, params = _data(np.float32)
    g = api.compile_program(parse(cell(SPELLINGS[1]), "m.ember"))
    pool = GuardedPool()
    got = TritonProgram(g, cache=CodeCache(tmp_path))(inputs, params, pool=pool)
    assert pool.check() == []
    atol, rtol = tolerance(np.dtype(np.float32), "ieee")
    for name, want in api.run(g, inputs, params).items():
        np.testing.assert_allclose(got[name], want, atol=atol, rtol=rtol, err_msg=name)


def test_the_matmuls_come_first_in_written_order() -> None:
    src = """model M {
  param a: f32[4, 4] = zeros
  param v: f32[4] = zeros
  def forward(x: f32[2, 4]) -> f32[2, 4] { return v + x @ a + x + x @ transpose(a) }
}"""
    text = print_graph(canonical_sums(compile_src(src, stage="ir")))
    ops = [line.split("=", 1)[1].split("#")[0].split() for line in text.splitlines()[1:-2]]
    # %3 = x @ a, %5 = x @ transpose(a), %1 = v, %0 = x
    assert ops[-3:] == [["add", "%3", "%5"], ["add", "%6", "%1"], ["add", "%7", "%0"]]
    assert [o[0] for o in ops].count("add") == 3


@pytest.mark.parametrize("body", [
    "return v + x @ a",                                # one matmul: as written
    "let s = x @ a + v\n    return s * (s + x @ a)",   # s read twice: a term, not inner
])
def test_sums_left_alone(body: str) -> None:
    src = f"""model M {{
  param a: f32[4, 4] = zeros
  param v: f32[4] = zeros
  def forward(x: f32[2, 4]) -> f32[2, 4] {{
    {body}
  }}
}}"""
    g = compile_src(src, stage="ir")
    assert print_graph(canonical_sums(g)) == print_graph(g)
