"""The torch evaluator of the IR (tests/torch_ir.py) against the NumPy oracle.

Two independent readings of every op must agree in float64 on every model in
models/ (both entries, eval and train mode), and the torch one must carry
gradients, since the gradient tests differentiate through it.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch_ir import evaluate_torch, torch_rules
from util import MODEL_NAMES, MODELS, compile_src, perturb

from ember import api
from ember.ir.graph import Graph, walk_nodes
from ember.ir.ops import Op
from ember.lang.emitter import Options
from ember.runtime import oracle
from ember.runtime.inputs import draw_inputs

TOL64 = 1e-10  # float64, relative to the output's largest magnitude
# Ops (by name) with no torch rule yet, each with the reason.
PENDING = "the op is being added to ir/ops.py; its shape and oracle rules have not landed"
UNCOVERED: dict[str, str] = {name: PENDING for name in
                             ("dim", "stop_grad", "pad", "flip", "max_pool2d_grad")}
DIMS = {"B": 3, "T": 5}
# Every op the models do not use, and a CALL region (kept at stage "ir").
OPS_SRC = """\
model Ops {
  def helper(a: f64[B, 4]) -> f64[B, 4] { return sqrt(abs(a)) ** 1.5 }

  def forward(x: f64[B, 4], img: f64[B, 2, 5, 7]) -> f64[B, 4] {
    let m = logical_or(logical_and(x < 0.5, x >= 0.0), logical_not(x != x) == (x <= -1.0))
    let y = where(m, maximum(x, 0.1), minimum(x, -0.2)) + helper(x)
    let z = concat(y, broadcast(min(x, axis=1, keepdims=true), B, 4), axis=1)
    let p = mean(avg_pool2d(img, 3, stride=2, padding=1), axis=(2, 3))
    let k = to_float(argmax(z, axis=1))
    return y * k[:, None] + sum(p, axis=1, keepdims=true) + to_float((x > 1.0) == (x > 2.0))
  }
}
"""


def test_every_op_has_a_torch_rule():
    assert [op for op in Op if op not in torch_rules and op.value not in UNCOVERED] == []
    assert not {op.value for op in torch_rules} & set(UNCOVERED)


def _graph(model: str, entry: str, train: bool) -> Graph:
    program = api.parse_file(MODELS / f"{model}.ember")
    return api.compile_program(program, entry, options=Options(train, True))


def _case(model: str, entry: str, train: bool, seed: int):
    g = _graph(model, entry, train)
    params = perturb(api.init_params(g, seed), seed)
    env = {k: v for k, v in DIMS.items() if k in {s for n in walk_nodes(g) for s in _syms(n)}}
    inputs, bound, _ = draw_inputs(g, {}, env, seed)
    return g, inputs, params, bound


def _syms(n) -> set[str]:
    from ember.ir import dims
    return dims.symbols(n.tensor.shape) if n.op is Op.INPUT else set()


def _close(actual: np.ndarray, expected: np.ndarray) -> bool:
    scale = max(1.0, float(np.max(np.abs(expected), initial=0.0)))
    return actual.dtype == expected.dtype and np.allclose(actual, expected, rtol=0,
                                                          atol=TOL64 * scale)


@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
@pytest.mark.parametrize("entry", ["forward", "loss"])
@pytest.mark.parametrize("model", MODEL_NAMES)
def test_models_match_oracle_f64(model, entry, train):
    g, inputs, params, env = _case(model, entry, train, seed=3)
    expected = oracle.evaluate(g, inputs, params, seed=3, env=env)
    got = evaluate_torch(g, inputs, params, seed=3, env=env)
    for e, t in zip(expected, got, strict=True):
        assert _close(t.detach().numpy(), e), f"{model}.{entry}: torch_ir disagrees"


@pytest.mark.parametrize("stage", ["ir", "opt"])
def test_remaining_ops_match_oracle_f64(stage):
    g = compile_src(OPS_SRC, stage=stage)
    rng = np.random.default_rng(0)
    inputs = {"x": rng.standard_normal((3, 4)), "img": rng.standard_normal((3, 2, 5, 7))}
    inputs["x"][0, 1] = np.nan  # in min and argmax
    inputs["x"][1, :3] = [0.5, 0.0, -1.0]  # ties with the comparisons' bounds
    (expected,) = oracle.evaluate(g, inputs, {})
    (got,) = evaluate_torch(g, inputs, {})
    assert np.allclose(got.numpy(), expected, rtol=TOL64, atol=TOL64, equal_nan=True)


def test_gradients_flow_through_every_parameter():
    g, inputs, params, env = _case("lstm", "loss", False, seed=1)
    leaves = {k: torch.tensor(v, requires_grad=True) for k, v in params.items()}
    (loss,) = evaluate_torch(g, inputs, leaves, env=env)
    grads = torch.autograd.grad(loss, list(leaves.values()))
    assert all(bool(gr.abs().sum() > 0) for gr in grads)
