"""Every VJP rule (passes/vjp.py) and the scan backward (passes/scan_grad.py),
in float64, against two independent references.

Each case is a small graph y = f(inputs, params), compiled from a DSL snippet
or built with ir.graph.Builder for the primitives the language does not spell
(pad, flip, cast, a runtime index, scans with xs, ys and reverse). The harness
turns it into the scalar L = sum_k sum(y_k * ct_k) with random cotangents
ct_k, differentiates it with `grad` exactly as `api.compile_program` does, and
checks each gradient on the oracle:

* against central finite differences of L along two random directions u:
  |(L(x + hu) - L(x - hu)) / 2h - <g, u>| < 1e-6 * sum |g * u| (the terms'
  magnitude, so a direction whose terms happen to cancel cannot inflate the
  error). h = 1e-5: truncation (h^2 |L'''|) and rounding (eps |L| / h) both
  stay near 1e-10. Inputs stay away from the non-smooth points: |x| >= 0.2
  where relu or abs could kink, distinct values 0.001 apart where a max could
  switch (a step moves them by < 1e-4);
* against torch.autograd through tests/torch_ir.py: max error < 1e-10 of the
  largest |gradient|.

Non-smooth points are compared with torch only (finite differences have no
single answer there): relu'(0) = 0, |x|'(0) = 0, maximum/minimum ties halve,
max/min reduction ties share evenly as torch.amax, max-pool routes to the
first maximum.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np
import pytest
import torch
from torch_ir import evaluate_torch
from util import LSTM_STEPS, compile_src

from ember.ir import dims
from ember.ir.dtypes import DType
from ember.ir.graph import Builder, Graph, walk_nodes
from ember.ir.ops import Op
from ember.ir.verify import verify
from ember.passes.grad import grad
from ember.passes.pipeline import optimize
from ember.passes.vjp import NON_DIFFERENTIABLE, STRUCTURAL, vjp_rules
from ember.runtime import oracle

FD_RTOL = 1e-6     # finite differences, relative to sum |g * u|
TORCH_RTOL = 1e-10  # torch.autograd, relative to the largest |gradient|
STEP = 1e-5
ENV = {"B": 2, "T": 3}
F64 = DType.F64


# ---- the harness ----------------------------------------------------------------------

@dataclass(frozen=True)
class Case:
    """y = f(inputs, params): `build` makes the graph; `kinds` says how to draw
    an input ("normal", "positive", "away" from 0, "grid": distinct values, or
    "ties": integers in {-1, 0, 1}, or an int n: integers in [0, n)); `step`
    is the finite-difference step."""

    build: Callable[[], Graph]
    kinds: Mapping[str, str | int] = field(default_factory=dict)
    env: Mapping[str, int] = field(default_factory=lambda: ENV)
    step: float = STEP


def with_loss(g: Graph) -> Graph:
    """L = sum over outputs k of sum(y_k * ct_k), the ct_k new inputs."""
    b = Builder(g.name, list(g.nodes))
    cts, loss = [], None
    for k, y in enumerate(g.outputs):
        t = b.type_of(y)
        ct = b.add(Op.INPUT, (), {"name": f"ct{k}", "shape": t.shape, "dtype": t.dtype})
        term = b.add(Op.SUM, (b.add(Op.MUL, (y, ct)),),
                     {"axes": tuple(range(len(t.shape))), "keepdims": False})
        cts.append(ct)
        loss = term if loss is None else b.add(Op.ADD, (loss, term))
    assert loss is not None
    return verify(b.build((*g.inputs, *cts), (loss,), ("loss",)))


def float_inputs(g: Graph) -> list[str]:
    return [g[i].attrs["name"] for i in g.inputs
            if g[i].tensor.dtype.is_float and not g[i].attrs["name"].startswith("ct")]


def differentiate(g: Graph) -> Graph:
    """As api.compile_program(..., grad=True, grad_inputs=True) after lowering."""
    return optimize(verify(grad(g, float_inputs(g))))


def draw(g: Graph, case: Case, rng: np.random.Generator) -> tuple[dict, dict]:
    """Inputs and parameters, each drawn as its kind says."""
    grid = rng.permutation(4000) * 0.05 - 100.0   # distinct values, shared by all inputs
    values, used = {}, 0
    leaves = [g[i] for i in g.inputs] + [n for n in g.nodes if n.op is Op.PARAM]
    for n in leaves:
        shape = dims.bind_shape(n.tensor.shape, dict(case.env))
        kind = case.kinds.get(n.attrs["name"], "normal")
        if isinstance(kind, int):
            v = rng.integers(0, kind, shape).astype(n.tensor.dtype.np)
        elif kind == "grid":  # 0.001 apart: a finite-difference step moves a value < 1e-4
            size = int(np.prod(shape))
            v, used = grid[used:used + size].reshape(shape) * 0.02, used + size
        else:
            v = _DRAW[kind](rng.standard_normal(shape), rng)
        values[n.attrs["name"]] = v
    params = {n.attrs["name"] for n in g.nodes if n.op is Op.PARAM}
    return ({k: v for k, v in values.items() if k not in params},
            {k: v for k, v in values.items() if k in params})


_DRAW = {"normal": lambda r, rng: r, "positive": lambda r, rng: 0.5 + np.abs(r),
         "away": lambda r, rng: np.sign(r) * (0.2 + np.abs(r)),
         "ties": lambda r, rng: rng.integers(-1, 2, r.shape).astype(np.float64)}


def oracle_grads(gg: Graph, inputs: dict, params: dict, env: Mapping[str, int]) -> dict:
    outs = oracle.evaluate(gg, inputs, params, 0, dict(env))
    return {name.removeprefix("grad."): v for name, v in zip(gg.output_names, outs)
            if name.startswith("grad.")}


def torch_grads(g: Graph, inputs: dict, params: dict, env: Mapping[str, int],
                wrt: list[str]) -> dict[str, np.ndarray]:
    """d loss / d wrt by torch.autograd through the torch evaluator of g."""
    leaves = {k: torch.tensor(v, requires_grad=k in wrt) for k, v in {**inputs, **params}.items()}
    (loss,) = evaluate_torch(g, {k: leaves[k] for k in inputs}, {k: leaves[k] for k in params},
                             seed=0, env=dict(env))
    got = torch.autograd.grad(loss, [leaves[k] for k in wrt], allow_unused=True,
                              materialize_grads=True)
    return {k: v.numpy() for k, v in zip(wrt, got)}


def fd_error(g: Graph, inputs: dict, params: dict, env: Mapping[str, int], name: str,
             gr: np.ndarray, step: float, rng: np.random.Generator) -> float:
    """The worst directional finite-difference error over two random directions."""
    def loss(shift: np.ndarray) -> float:
        ins, ps = dict(inputs), dict(params)
        values = ins if name in ins else ps
        values[name] = values[name] + shift
        return float(oracle.evaluate(g, ins, ps, 0, dict(env))[0])

    worst = 0.0
    for _ in range(2):
        u = rng.standard_normal(gr.shape)
        fd = (loss(step * u) - loss(-step * u)) / (2 * step)
        scale = float(np.sum(np.abs(gr * u)))
        worst = max(worst, abs(fd - float(np.sum(gr * u))) / scale if scale else abs(fd))
    return worst


def rel_err(got: np.ndarray, want: np.ndarray) -> float:
    assert got.shape == want.shape and got.dtype == np.float64, (got.shape, want.shape)
    scale = float(np.max(np.abs(want), initial=0.0)) or 1.0
    return float(np.max(np.abs(got - want), initial=0.0)) / scale


def check(case: Case, seed: int = 0, fd: bool = True) -> dict[str, np.ndarray]:
    """The oracle's gradients of the case's loss, checked against torch and
    (unless fd is False) finite differences; returned by name."""
    g = with_loss(case.build())
    gg = differentiate(g)
    rng = np.random.default_rng(seed)
    inputs, params = draw(g, case, rng)
    wrt = float_inputs(g) + sorted(params)
    got = oracle_grads(gg, inputs, params, case.env)
    assert sorted(got) == sorted(wrt)
    want = torch_grads(g, inputs, params, case.env, wrt)
    for name in wrt:
        assert rel_err(got[name], want[name]) < TORCH_RTOL, f"{name}: torch disagrees"
        if fd:
            err = fd_error(g, inputs, params, case.env, name, got[name], case.step, rng)
            assert err < FD_RTOL, f"{name}: finite differences disagree ({err:.2e})"
    return got


# ---- cases --------------------------------------------------------------------------

def dsl(sig: str, ret: str, expr: str, pre: str = "") -> Callable[[], Graph]:
    """A graph from `def forward(sig) -> ret { pre; return expr }` (float64)."""
    return model(f"model M {{\n  def forward({sig}) -> {ret} {{\n"
                 f"{pre}    return {expr}\n  }}\n}}\n")


def model(src: str, train: bool = False) -> Callable[[], Graph]:
    return lambda: compile_src(src, train=train)


def built(fn: Callable[[Builder, Callable[..., int]], int]) -> Callable[[], Graph]:
    """A graph from fn(b, inp), where inp(name, shape[, dtype]) adds an input."""
    def make() -> Graph:
        b = Builder("g")
        ins: list[int] = []

        def inp(name: str, shape: tuple, dtype: DType = F64) -> int:
            ins.append(b.add(Op.INPUT, (), {"name": name, "shape": shape, "dtype": dtype}))
            return ins[-1]
        y = fn(b, inp)
        return verify(b.build(tuple(ins), (y,)))
    return make


X = "x: f64[B, 3]"
AB = "a: f64[B, 1, 3], b: f64[4, 1]"   # broadcast both ways, size-1 axes
QKV = "q: f64[B, 2, T, 3], k: f64[B, 2, T, 3], v: f64[B, 2, T, 4]"

CASES: dict[str, Case] = {
    # elementwise unary
    "neg": Case(dsl(X, "f64[B, 3]", "-x")),
    "exp": Case(dsl(X, "f64[B, 3]", "exp(x)")),
    "log": Case(dsl(X, "f64[B, 3]", "log(x)"), {"x": "positive"}),
    "sqrt": Case(dsl(X, "f64[B, 3]", "sqrt(x)"), {"x": "positive"}),
    "rsqrt": Case(dsl(X, "f64[B, 3]", "rsqrt(x)"), {"x": "positive"}),
    "abs": Case(dsl(X, "f64[B, 3]", "abs(x)"), {"x": "away"}),
    "relu": Case(dsl(X, "f64[B, 3]", "relu(x)"), {"x": "away"}),
    "sigmoid": Case(dsl(X, "f64[B, 3]", "sigmoid(x)")),
    "tanh": Case(dsl(X, "f64[B, 3]", "tanh(x)")),
    "erf": Case(dsl(X, "f64[B, 3]", "erf(x)")),
    # x -> f64(f32(x)) is linear up to f32 rounding (~6e-8): a unit step makes
    # the rounding negligible and has no truncation error
    "cast": Case(built(lambda b, inp: b.add(Op.CAST, (b.add(Op.CAST, (inp("x", ("B", 3)),),
                                                                {"dtype": DType.F32}),),
                                            {"dtype": F64})), step=1.0),
    # elementwise binary, broadcasting both ways
    "add": Case(dsl(AB, "f64[B, 4, 3]", "a + b")),
    "sub": Case(dsl("a: f64[B, 3], s: f64[]", "f64[B, 3]", "a - s")),
    "mul": Case(dsl(AB, "f64[B, 4, 3]", "a * b")),
    "div": Case(dsl(AB, "f64[B, 4, 3]", "a / b"), {"b": "away"}),
    "pow": Case(dsl("a: f64[B, 3], p: f64[3]", "f64[B, 3]", "a ** p"), {"a": "positive"}),
    "pow_const": Case(dsl(X, "f64[B, 3]", "x ** 3.5"), {"x": "positive"}),
    "maximum": Case(dsl(AB, "f64[B, 4, 3]", "maximum(a, b)"), {"a": "grid", "b": "grid"}),
    "minimum": Case(dsl(AB, "f64[B, 4, 3]", "minimum(a, b)"), {"a": "grid", "b": "grid"}),
    "where": Case(dsl("c: f64[B, 1], a: f64[3], b: f64[B, 3]", "f64[B, 3]",
                      "where(c > 0.0, a, b)")),
    # reductions, over symbolic and static axes
    "sum": Case(dsl("x: f64[B, 3, 4]", "f64[B, 4]", "sum(x, axis=1)")),
    "sum_keepdims": Case(dsl("x: f64[B, 3, 4]", "f64[1, 3, 1]",
                             "sum(x, axis=(0, 2), keepdims=true)")),
    "sum_all": Case(dsl("x: f64[B, 3, 4]", "f64[]", "sum(x)")),
    "mean_symbolic": Case(dsl("x: f64[B, 3]", "f64[3]", "mean(x, axis=0)")),
    "mean_keepdims": Case(dsl("x: f64[B, 3, 4]", "f64[B, 1, 1]",
                              "mean(x, axis=(1, 2), keepdims=true)")),
    "max": Case(dsl("x: f64[B, 3, 4]", "f64[B, 3]", "max(x, axis=-1)"), {"x": "grid"}),
    "min": Case(dsl("x: f64[B, 3, 4]", "f64[1, 3, 1]", "min(x, axis=(0, 2), keepdims=true)"),
                {"x": "grid"}),
    # movement
    "reshape": Case(dsl("x: f64[B, 2, 3]", "f64[B, 6]", "reshape(x, B, 6)")),
    "permute": Case(dsl("x: f64[B, 2, 3]", "f64[3, B, 2]", "permute(x, 2, 0, 1)")),
    "expand": Case(dsl("x: f64[4, 1], y: f64[B, 4, 3]", "f64[B, 4, 3]",
                       "broadcast(x, B, 4, 3) * y")),
    "slice": Case(dsl("x: f64[B, 7]", "f64[B, 2]", "x[:, 1:5:2]")),
    "slice_rows": Case(dsl("x: f64[5, B]", "f64[2, B]", "x[::3]")),
    "concat": Case(dsl("a: f64[B, 2], b: f64[B, 3]", "f64[B, 5]", "concat(a, b, axis=1)")),
    "gather": Case(dsl("table: f64[5, 3], ids: i32[B, 2]", "f64[B, 2, 3]",
                       "embedding(table, ids)"), {"ids": 5}),
    "index": Case(built(lambda b, inp: b.add(Op.INDEX, (inp("x", ("B", 4, 3)),
                                                         inp("i", (), DType.I32)),
                                             {"axis": 1})), {"i": 4}),
    "pad": Case(built(lambda b, inp: b.add(Op.PAD, (inp("x", (3, 5)),),
                                           {"lows": (-1, 2), "highs": (1, -2),
                                            "interiors": (2, 1)}))),
    "flip": Case(built(lambda b, inp: b.add(Op.FLIP, (inp("x", ("B", 3, 4)),),
                                            {"axes": (0, 2)}))),
    # compute
    "matmul_shared_weight": Case(dsl("a: f64[B, 3, 4], w: f64[4, 2]", "f64[B, 3, 2]", "a @ w")),
    "matmul_batch_broadcast": Case(dsl("a: f64[2, 1, 3, 4], b: f64[B, 4, 2]",
                                       "f64[2, B, 3, 2]", "a @ b")),
    "matmul_rank2": Case(dsl("a: f64[3, 4], b: f64[4, B]", "f64[3, B]", "a @ b")),
    "matmul_lhs_broadcast": Case(dsl("a: f64[3, 4], b: f64[B, 4, 2]", "f64[B, 3, 2]", "a @ b")),
    "conv2d": Case(dsl("x: f64[B, 2, 5, 6], w: f64[3, 2, 3, 3]", "f64[B, 3, 5, 6]",
                       "conv2d(x, w, padding=1)")),
    "conv2d_strided": Case(dsl("x: f64[B, 2, 6, 7], w: f64[3, 2, 3, 2]", "f64[B, 3, 2, 2]",
                               "conv2d(x, w, stride=(2, 3))")),
    "conv2d_grouped": Case(dsl("x: f64[B, 4, 7, 7], w: f64[4, 2, 2, 3]", "f64[B, 4, 4, 3]",
                               "conv2d(x, w, stride=(2, 1), padding=(1, 0), dilation=(1, 2), "
                               "groups=2)")),
    "conv2d_1x1_padded": Case(dsl("x: f64[B, 2, 3, 4], w: f64[3, 2, 1, 1]", "f64[B, 3, 5, 6]",
                                  "conv2d(x, w, padding=1)")),
    "conv2d_dilated_strided": Case(dsl("x: f64[B, 2, 9, 8], w: f64[3, 2, 3, 2]",
                                       "f64[B, 3, 4, 4]",
                                       "conv2d(x, w, stride=2, padding=1, dilation=2)")),
    "max_pool2d": Case(dsl("x: f64[B, 2, 4, 6]", "f64[B, 2, 2, 3]", "max_pool2d(x, 2)"),
                       {"x": "grid"}),
    "max_pool2d_padded": Case(dsl("x: f64[B, 2, 5, 6]", "f64[B, 2, 3, 3]",
                                  "max_pool2d(x, 3, stride=2, padding=1)"), {"x": "grid"}),
    "avg_pool2d": Case(dsl("x: f64[B, 2, 5, 6]", "f64[B, 2, 3, 3]",
                           "avg_pool2d(x, 3, stride=2, padding=1)")),
    # composites
    "softmax": Case(dsl("x: f64[B, 5]", "f64[B, 5]", "softmax(x)")),
    "log_softmax": Case(dsl("x: f64[B, T, 5]", "f64[B, T, 5]", "log_softmax(x)")),
    "layer_norm": Case(dsl("x: f64[B, 5], w: f64[5], b: f64[5]", "f64[B, 5]",
                           "layer_norm(x, w, b)")),
    "cross_entropy": Case(dsl("x: f64[B, T, 5], y: i32[B, T]", "f64[]", "cross_entropy(x, y)"),
                          {"y": 5}),
    "gelu": Case(dsl(X, "f64[B, 3]", "gelu(x)")),
    # attention (recognized into one op; passes/recognize.py): causal and scaled,
    # and with an additive mask, an input whose gradient goes through the region
    "attention_causal": Case(dsl(QKV, "f64[B, 2, T, 4]",
                                 "softmax(where(causal_mask(T), s, -1e9)) @ v",
                                 "    let s = (q @ transpose(k)) * 0.5\n")),
    "attention_additive_mask": Case(dsl(f"{QKV}, m: f64[T, T]", "f64[B, 2, T, 4]",
                                        "softmax(q @ transpose(k) / 2.0 + m) @ v")),
}


@pytest.mark.parametrize("name", list(CASES))
def test_vjp_matches_finite_differences_and_torch(name: str) -> None:
    check(CASES[name])


def test_every_op_has_one_autodiff_role() -> None:
    roles = [set(vjp_rules), set(NON_DIFFERENTIABLE), set(STRUCTURAL)]
    assert set().union(*roles) == set(Op)
    assert sum(len(r) for r in roles) == len(Op), "an op has two roles"


def test_every_vjp_rule_has_a_case() -> None:
    seen = {n.op for case in CASES.values() for n in walk_nodes(case.build())}
    assert set(vjp_rules) - seen == set()


# ---- non-smooth points: as torch --------------------------------------------------------

TIES = {
    "relu_at_0": Case(dsl(X, "f64[B, 3]", "relu(x)"), {"x": "ties"}),
    "abs_at_0": Case(dsl(X, "f64[B, 3]", "abs(x)"), {"x": "ties"}),
    "maximum": Case(dsl(AB, "f64[B, 4, 3]", "maximum(a, b)"), {"a": "ties", "b": "ties"}),
    "minimum": Case(dsl(AB, "f64[B, 4, 3]", "minimum(a, b)"), {"a": "ties", "b": "ties"}),
    "max": Case(dsl("x: f64[B, 3, 4]", "f64[B, 1, 4]", "max(x, axis=1, keepdims=true)"),
                {"x": "ties"}),
    "min": Case(dsl("x: f64[B, 3, 4]", "f64[4]", "min(x, axis=(0, 1))"), {"x": "ties"}),
    "max_pool2d": Case(dsl("x: f64[B, 2, 4, 6]", "f64[B, 2, 2, 3]", "max_pool2d(x, 2)"),
                       {"x": "ties"}),
    "max_pool2d_overlapping": Case(dsl("x: f64[B, 2, 5, 6]", "f64[B, 2, 3, 3]",
                                       "max_pool2d(x, 3, stride=2, padding=1)"), {"x": "ties"}),
}


@pytest.mark.parametrize("name", list(TIES))
def test_ties_and_kinks_match_torch(name: str) -> None:
    check(TIES[name], fd=False)


def test_max_ties_share_the_gradient_evenly() -> None:
    """Not only torch's word for it: a row of three equal maxima gets 1/3 each."""
    case = Case(dsl("x: f64[4]", "f64[]", "max(x)"))
    gg = differentiate(with_loss(case.build()))
    x = np.array([2.0, -1.0, 2.0, 2.0])
    got = oracle_grads(gg, {"x": x, "ct0": np.array(3.0)}, {}, {})
    assert np.array_equal(got["x"], [1.0, 0.0, 1.0, 1.0])


def test_stop_grad_blocks_the_gradient() -> None:
    """d/dx sum(x * stop_grad(x) * ct) = x * ct, where the product rule would double it."""
    case = Case(built(lambda b, inp: b.add(Op.MUL, (x := inp("x", ("B", 3)),
                                                    b.add(Op.STOP_GRAD, (x,))))))
    got = check(case, fd=False)
    g = with_loss(case.build())
    inputs, _ = draw(g, case, np.random.default_rng(0))
    np.testing.assert_allclose(got["x"], inputs["x"] * inputs["ct0"], rtol=1e-15)


# ---- loops: backpropagation through time --------------------------------------------------

def scan(reverse: bool, results: tuple[int, ...] = (0, 1, 2, 3)) -> Graph:
    """A scan with every kind of operand: carries h [2, 3] and c [3], xs x [T, 2, 4],
    captured w [4, 3] and u [3, 3]; per step (t the forward index either way)
        h' = tanh(x_t @ w + h @ u) * c,   c' = c * sigmoid(sum(h', axis=0)),
        ys: h' * (t + 1) and c' * T;
    the graph returns the scan's `results` (final h, c, then the ys)."""
    body = Builder("step")
    t, h, c, x_t, w, u = (body.add(Op.INPUT, (), {"name": nm, "shape": sh, "dtype": dt})
                          for nm, sh, dt in (("t", (), DType.I32), ("h", (2, 3), F64),
                                             ("c", (3,), F64), ("x_t", (2, 4), F64),
                                             ("w", (4, 3), F64), ("u", (3, 3), F64)))

    def op(o: Op, *srcs: int, **attrs: object) -> int:
        return body.add(o, srcs, attrs)
    a = op(Op.ADD, op(Op.MATMUL, x_t, w), op(Op.MATMUL, h, u))
    h2 = op(Op.MUL, op(Op.TANH, a), c)
    c2 = op(Op.MUL, c, op(Op.SIGMOID, op(Op.SUM, h2, axes=(0,), keepdims=False)))
    step = op(Op.CAST, op(Op.ADD, t, op(Op.CONST, value=1, dtype=DType.I32)), dtype=F64)
    length = op(Op.CAST, op(Op.DIM, dim="T"), dtype=F64)
    step_g = body.build((t, h, c, x_t, w, u), (h2, c2, op(Op.MUL, h2, step),
                                               op(Op.MUL, c2, length)))
    b = Builder("g")
    ins = [b.add(Op.INPUT, (), {"name": nm, "shape": sh, "dtype": F64})
           for nm, sh in (("h", (2, 3)), ("c", (3,)), ("x", ("T", 2, 4)), ("w", (4, 3)),
                          ("u", (3, 3)))]
    loop = b.add(Op.LOOP, tuple(ins), {"body": step_g, "n_carry": 2, "n_xs": 1, "length": "T",
                                       "reverse": reverse})
    return verify(b.build(tuple(ins), tuple(b.add(Op.GET, (loop,), {"index": k})
                                            for k in results)))


@pytest.mark.parametrize("length", [0, 1, 4])
@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
def test_scan_with_carries_xs_ys(reverse: bool, length: int) -> None:
    check(Case(lambda: scan(reverse), env={"T": length}))


@pytest.mark.parametrize("results", [(2,), (3, 1), (0,)], ids=["ys", "c_and_ys", "h"])
def test_scan_with_some_results_unused(results: tuple[int, ...]) -> None:
    check(Case(lambda: scan(True, results), env={"T": 3}))


RNN = """
model Rnn {{
  param w: f64[3, 4] = normal()
  param u: f64[4, 4] = normal(0.5)
  def forward(x: f64[B, T, 3], h: f64[B, 4], c: f64[B, 4]) -> f64[B, 4] {{
{body}    return h
  }}
}}
"""
LOOPS = {
    "rnn": RNN.format(body="    for t in range(T) { h = tanh(x[:, t, :] @ w + h @ u) }\n"),
    "lstm": f"""
model Lstm {{
  param w_ih: f64[3, 16] = normal()
  param w_hh: f64[4, 16] = normal(0.5)
  param b: f64[16] = normal()
  def forward(x: f64[B, T, 3], h: f64[B, 4], c: f64[B, 4]) -> f64[B, 4] {{
{LSTM_STEPS}    return h
  }}
}}
""",
    "nested": RNN.format(body="""    for k in range(2) {
      for t in range(T) { h = tanh(x[:, t, :] @ w + h @ u + c) }
      c = c * sigmoid(h)
    }
"""),
    "dropout": RNN.format(body="""    for t in range(T) {
      h = dropout(tanh(x[:, t, :] @ w + h @ u), p=0.3) + c
    }
"""),
    # the inner loop reads the outer counter; dropout keyed by both counters
    "nested_dropout": RNN.format(body="""    for t in range(T) {
      for k in range(2) { h = dropout(tanh(x[:, t, :] @ w + h @ u), p=0.5) }
    }
"""),
    # a carry that never depends on an input or parameter, and a weight that
    # is also read outside its matmul (a gradient summed step by step)
    "inactive_carry": RNN.format(body="""    let n = ones(B, 4)
    for t in range(T) {
      n = n + 1.0
      h = tanh(x[:, t, :] @ w + h @ u) / n + sum(u, axis=0) * c
    }
"""),
}


@pytest.mark.parametrize("T", [0, 1, 3])
@pytest.mark.parametrize("name", list(LOOPS))
def test_loops_in_the_language(name: str, T: int) -> None:
    """In train mode, so dropout is active: its masks depend on the step, and the
    backward must draw the very masks the forward did (torch_ir and the finite
    differences both rerun the forward with the same seed)."""
    got = check(Case(model(LOOPS[name], train=True), env={"B": 2, "T": T}))
    weights = [v for k, v in got.items() if k not in ("x", "h", "c")]
    assert weights and all(bool(np.any(v)) == (T > 0) for v in weights)


def test_dropout_masks_are_recomputed_not_stored() -> None:
    """The backward scan draws from the forward's random stream, and nothing the
    forward saves per step depends on a random draw."""
    gg = differentiate(with_loss(model(LOOPS["dropout"], train=True)()))
    loops = [n for n in gg.nodes if n.op is Op.LOOP]
    streams = [{m.attrs["stream"] for m in walk_nodes(n.attrs["body"]) if m.op is Op.RAND}
               for n in loops]
    assert len(loops) == 2 and len(streams[0]) == 1 and streams[0] == streams[1]
    body = loops[0].attrs["body"]
    random: set[int] = set()
    for i, m in enumerate(body.nodes):
        if m.op is Op.RAND or random.intersection(m.srcs):
            random.add(i)
    saved = [o for o, name in zip(body.outputs, body.output_names) if name.startswith("saved")]
    assert saved and random and not random.intersection(saved)
