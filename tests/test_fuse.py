"""The fusion pass: the decision (can_join and its reasons) and the rebuild
(which kernels a plan holds), on small programs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from util import compile_src

from ember import api
from ember.ir.ops import Op
from ember.passes.fuse import Kernel, Plan, can_join, fuse
from ember.runtime.triton_backend import TritonProgram


def plan_of(body: str, args: str) -> Plan:
    return fuse(compile_src(f"model M {{ def forward({args}) {{ {body} }} }}", float64=False))


def kinds(plan: Plan) -> list[tuple[str, list[str]]]:
    g = plan.graph
    return [(k.kind, [g.nodes[i].op.value for i in sorted(k.nodes)]) for k in plan.kernels]


def test_elementwise_chain_with_broadcast_is_one_kernel() -> None:
    plan = plan_of("return exp(x * 2.0 + b) - relu(x)", "x: f32[B, 7], b: f32[7]")
    assert [k for k, _ in kinds(plan)] == ["pointwise"]


def test_dense_bias_relu_is_one_matmul_kernel() -> None:
    plan = plan_of("return relu(x @ w + b)", "x: f32[B, 7], w: f32[7, 5], b: f32[5]")
    assert kinds(plan) == [("matmul", ["matmul", "add", "relu"])]


def test_softmax_and_layer_norm_are_one_kernel_each() -> None:
    for body in ("return softmax(x)", "return layer_norm(x, w, b)"):
        plan = plan_of(body, "x: f32[B, 9], w: f32[9], b: f32[9]")
        assert [k for k, _ in kinds(plan)] == ["reduce"]


def test_reductions_over_one_row_share_a_kernel() -> None:
    # softmax of a layer norm reduces the same rows: one kernel, no round trip
    plan = plan_of("return softmax(layer_norm(x, w, b))", "x: f32[B, 9], w: f32[9], b: f32[9]")
    ((kind, ops),) = kinds(plan)
    assert kind == "reduce" and {"mean", "rsqrt", "max", "exp", "sum", "div"} <= set(ops)


def test_cross_entropy_is_two_kernels() -> None:
    # the batch mean needs every row's loss first: a reduction over other axes
    plan = plan_of("return cross_entropy(z, y)", "z: f32[B, 10], y: i32[B]")
    assert [ops[-1] for _, ops in kinds(plan)] == ["sum", "neg"]


def test_views_move_no_data() -> None:
    plan = plan_of("return transpose(reshape(x, B, 4, 2)) @ w",
                   "x: f32[B, 8], w: f32[4, 3]")
    assert kinds(plan) == [("matmul", ["matmul"])]


def test_can_join_says_why_not() -> None:
    plan = plan_of("let y = x @ w\nreturn y * s", "x: f32[B, 7], w: f32[7, 5], s: f32[3, B, 5]")
    g = plan.graph
    mul = next(i for i, n in enumerate(g.nodes) if n.op is Op.MUL)
    matmul_kernel = plan.home[next(i for i, n in enumerate(g.nodes) if n.op is Op.MATMUL)]
    why = can_join(plan, matmul_kernel, mul)
    assert why == "mul [3, B, 5] does not match the matmul output [B, 5]"
    assert [(g.nodes[p].op, g.nodes[c].op, r) for p, c, r in plan.unfused] == [
        (Op.MATMUL, Op.MUL, why)]


def test_can_join_accepts_an_epilogue_on_a_fresh_plan() -> None:
    g = compile_src("model M { def forward(x: f32[B, 7], w: f32[7, 5]) { return relu(x @ w) } }",
                    float64=False)
    m = next(i for i, n in enumerate(g.nodes) if n.op is Op.MATMUL)
    plan = Plan(g, [Kernel("matmul", m, [m])], {m: 0}, {}, [])
    assert can_join(plan, 0, m + 1) is None


def test_unfused_mode_gives_each_operation_a_kernel() -> None:
    plan = fuse(plan_of("return relu(x @ w + b)", "x: f32[B, 7], w: f32[7, 5], b: f32[5]").graph,
                enabled=False)
    assert [ops for _, ops in kinds(plan)] == [["matmul"], ["add"], ["relu"]]


@pytest.mark.parametrize("as_torch", [False, True])
def test_triton_program_takes_arrays_or_tensors(as_torch: bool) -> None:
    g = compile_src("model M { def forward(x: f32[B, 4]) -> f32[B, 4] { return relu(x) } }",
                    float64=False)
    x = np.array([[-1.0, 2.0, -3.0, 4.0]], np.float32)
    out = TritonProgram(g)({"x": torch.from_numpy(x) if as_torch else x}, {})["forward"]
    assert isinstance(out, torch.Tensor if as_torch else np.ndarray)
    np.testing.assert_array_equal(np.asarray(out), np.maximum(x, 0))


def test_nested_loops_read_the_outer_counter_as_a_scalar() -> None:
    src = """model M {
  def forward(x: f32[B, S, T, 4]) -> f32[B, 4] {
    let acc = zeros(B, 4)
    for s in range(S) {
      for t in range(T) { acc = acc + dropout(x[:, s, t, :], p=0.3) * to_float(s + 1) }
    }
    return acc
  }
}"""
    g = compile_src(src, float64=False, train=True)
    x = np.random.default_rng(0).standard_normal((2, 3, 2, 4)).astype(np.float32)
    got = TritonProgram(g)({"x": x}, {}, seed=7)["forward"]
    want = api.run(g, {"x": x}, {}, seed=7)["forward"]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
