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
from ember.ir.dtypes import DType
from ember.ir.graph import Builder, Graph, walk_nodes
from ember.ir.ops import Op
from ember.ir.verify import verify
from ember.lang.emitter import Options
from ember.runtime import oracle
from ember.runtime.inputs import draw_inputs

TOL64 = 1e-10  # float64, relative to the output's largest magnitude
# Ops with no torch rule, each with the reason; none today.
UNCOVERED: dict[Op, str] = {}
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
    assert [op for op in Op if op not in torch_rules and op not in UNCOVERED] == []
    assert not set(torch_rules) & set(UNCOVERED)


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


def test_dropout_of_a_scalar_matches_oracle():
    g = compile_src("model M {\n  def forward(x: f64[]) { return dropout(x, p=0.5) }\n}\n",
                    train=True)
    for seed in range(4):
        (expected,) = oracle.evaluate(g, {"x": np.float64(2.0)}, {}, seed=seed)
        (got,) = evaluate_torch(g, {"x": np.float64(2.0)}, {}, seed=seed)
        assert float(got) == float(expected)


def test_gradients_flow_through_every_parameter():
    g, inputs, params, env = _case("lstm", "loss", False, seed=1)
    leaves = {k: torch.tensor(v, requires_grad=True) for k, v in params.items()}
    (loss,) = evaluate_torch(g, inputs, leaves, env=env)
    grads = torch.autograd.grad(loss, list(leaves.values()))
    assert all(bool(gr.abs().sum() > 0) for gr in grads)


# ---- ops built directly (the language does not spell them all) -------------------

def _unary_graph(op: Op, shape: tuple[int, ...], **attrs) -> Graph:
    b = Builder("g")
    x = b.add(Op.INPUT, (), {"name": "x", "shape": shape, "dtype": DType.F64})
    y = b.add(op, (x,), attrs)
    return b.build((x,), (y,))


PADS = [((1, 0), (2, 3), (0, 1)), ((-1, 2), (0, -2), (2, 0)), ((0, 0), (0, 0), (3, 3)),
        ((-2, -1), (-3, 1), (1, 2))]


@pytest.mark.parametrize("op, attrs", [
    *[(Op.PAD, {"lows": lo, "highs": hi, "interiors": mid}) for lo, hi, mid in PADS],
    (Op.FLIP, {"axes": (0,)}), (Op.FLIP, {"axes": (0, 1)}), (Op.FLIP, {"axes": ()}),
    (Op.STOP_GRAD, {})])
def test_movement_ops_match_oracle(op, attrs):
    g = _unary_graph(op, (3, 5), **attrs)
    x = np.random.default_rng(0).standard_normal((3, 5))
    (expected,) = oracle.evaluate(g, {"x": x}, {})
    (got,) = evaluate_torch(g, {"x": x}, {})
    assert got.shape == expected.shape and np.array_equal(got.numpy(), expected)


@pytest.mark.parametrize("kernel, stride, padding", [((2, 2), (2, 2), (0, 0)),
                                                     ((3, 3), (1, 2), (1, 1)),
                                                     ((3, 1), (2, 1), (1, 0))])
def test_max_pool2d_grad_matches_oracle(kernel, stride, padding):
    pool = {"kernel": kernel, "stride": stride, "padding": padding}
    b = Builder("g")
    x = b.add(Op.INPUT, (), {"name": "x", "shape": (2, 3, 5, 6), "dtype": DType.F64})
    y = b.add(Op.MAX_POOL2D, (x,), pool)
    dy = b.add(Op.INPUT, (), {"name": "dy", "shape": b.type_of(y).shape, "dtype": DType.F64})
    dx = b.add(Op.MAX_POOL2D_GRAD, (x, dy), pool)
    g = b.build((x, dy), (dx,))
    rng = np.random.default_rng(1)
    inputs = {"x": rng.integers(0, 3, (2, 3, 5, 6)).astype(np.float64),  # many ties
              "dy": rng.standard_normal(b.type_of(y).shape)}
    (expected,) = oracle.evaluate(g, inputs, {})
    (got,) = evaluate_torch(g, inputs, {})
    assert np.allclose(got.numpy(), expected, rtol=0, atol=TOL64)


def _scan_graph(reverse: bool) -> Graph:
    """carry c: f64[3]; xs: f64[T, 3]; captured w: f64[3]. c = c * w + x_t + t;
    ys: c * DIM(T), one row per step."""
    body = Builder("body")
    t, c, x_t, w = (body.add(Op.INPUT, (), {"name": nm, "shape": sh, "dtype": dt})
                    for nm, sh, dt in (("t", (), DType.I32), ("c", (3,), DType.F64),
                                       ("x_t", (3,), DType.F64), ("w", (3,), DType.F64)))
    tf = body.add(Op.CAST, (t,), {"dtype": DType.F64})
    c2 = body.add(Op.ADD, (body.add(Op.ADD, (body.add(Op.MUL, (c, w)), x_t)), tf))
    n = body.add(Op.CAST, (body.add(Op.DIM, (), {"dim": "T"}),), {"dtype": DType.F64})
    body_g = body.build((t, c, x_t, w), (c2, body.add(Op.MUL, (c2, n))))
    b = Builder("g")
    c0, xs, w0 = (b.add(Op.INPUT, (), {"name": nm, "shape": sh, "dtype": DType.F64})
                  for nm, sh in (("c", (3,)), ("xs", ("T", 3)), ("w", (3,))))
    loop = b.add(Op.LOOP, (c0, xs, w0), {"body": body_g, "n_carry": 1, "n_xs": 1,
                                         "length": "T", "reverse": reverse})
    outs = (b.add(Op.GET, (loop,), {"index": 0}), b.add(Op.GET, (loop,), {"index": 1}))
    return verify(b.build((c0, xs, w0), outs))


@pytest.mark.parametrize("length", [0, 1, 4])
@pytest.mark.parametrize("reverse", [False, True])
def test_scan_matches_oracle(reverse, length):
    g = _scan_graph(reverse)
    rng = np.random.default_rng(2)
    inputs = {"c": rng.standard_normal(3), "xs": rng.standard_normal((length, 3)),
              "w": rng.standard_normal(3)}
    expected = oracle.evaluate(g, inputs, {})
    got = evaluate_torch(g, inputs, {})
    for e, t in zip(expected, got, strict=True):
        assert t.shape == e.shape and np.allclose(t.numpy(), e, rtol=TOL64, atol=TOL64)


@pytest.mark.parametrize("model", ["mlp", "resnet"])
def test_training_step_matches_oracle_f64(model):
    """The step graph (foreach update, summing foreach norm, batch norm's
    running statistics) in the independent evaluator."""
    from ember.lang.emitter import Options
    from ember.passes.optim import OptimizerConfig
    config = OptimizerConfig("adamw", weight_decay=0.01, clip=0.1)
    program = api.parse_file(MODELS / f"{model}.ember")
    g = api.compile_train_step(program, config, float64=True, dropout=False)
    params = api.init_train_state(g, api.init_model_params(program, Options(float64=True)))
    inputs, env, _ = draw_inputs(g, {}, {"B": 3}, 4)
    inputs.update(api.step_scalars(config, 1e-2, 3, float64=True))
    expected = oracle.evaluate(g, inputs, params, seed=4, env=env)
    got = evaluate_torch(g, inputs, params, seed=4, env=env)
    for name, e, t in zip(g.output_names, expected, got, strict=True):
        assert _close(t.detach().numpy(), e), name
