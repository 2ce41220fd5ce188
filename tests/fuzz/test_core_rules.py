"""Checks that mutation testing (fuzz/mutate_core.py) found unguarded.

Each test pins one rule whose operator or check could be flipped without any
other test in its target's subset noticing: the dtype checks of mean, rand and
stop_grad and the arithmetic of pad lengths (shape rules), and four refusals
of the fusion decision.
"""

from __future__ import annotations

import pytest
from util import compile_src

from ember.ir.dtypes import DType
from ember.ir.graph import ShapeError, TensorType
from ember.ir.ops import Op
from ember.ir.shapes import pad_length, shape_rules
from ember.passes.fuse import Plan, fuse

I32_3 = TensorType((3,), DType.I32)
F32_3 = TensorType((3,), DType.F32)


def test_mean_needs_floats():
    with pytest.raises(ShapeError, match="mean expects a float"):
        shape_rules[Op.MEAN]([I32_3], {"axes": (0,), "keepdims": False})
    assert shape_rules[Op.SUM]([I32_3], {"axes": (0,), "keepdims": False}) == \
        TensorType((), DType.I32)


@pytest.mark.parametrize("counter", [TensorType((), DType.F32), TensorType((2,), DType.I32)])
def test_rand_reads_only_integer_scalar_counters(counter):
    attrs = {"shape": (2, 2), "stream": "s"}
    assert shape_rules[Op.RAND]([TensorType((), DType.I32)], attrs) == \
        TensorType((2, 2), DType.F32)
    with pytest.raises(ShapeError, match="loop counters"):
        shape_rules[Op.RAND]([counter], attrs)


def test_stop_grad_keeps_any_dtype():
    assert shape_rules[Op.STOP_GRAD]([I32_3], {}) == I32_3
    assert shape_rules[Op.STOP_GRAD]([F32_3], {}) == F32_3


@pytest.mark.parametrize("size, low, high, interior, length", [
    (5, 1, 2, 0, 8), (5, 0, 0, 1, 9), (5, 1, 2, 2, 16), (5, -1, -2, 0, 2), (1, 0, 0, 3, 1),
    (0, 2, 1, 1, 3), ("B", 0, 0, 0, "B")])
def test_pad_length(size, low, high, interior, length):
    assert pad_length(size, low, high, interior) == length


def test_pad_length_rejects_negative_sizes():
    with pytest.raises(ShapeError, match="negative size"):
        pad_length(2, -2, -1, 0)
    with pytest.raises(ShapeError, match="symbolic"):
        pad_length("B", 1, 0, 0)


def _plan(body: str, args: str) -> Plan:
    return fuse(compile_src(f"model M {{ def forward({args}) {{ {body} }} }}", float64=False))


def _kernels(plan: Plan) -> list[tuple[str, list[str]]]:
    return [(k.kind, [plan.graph.nodes[i].op.value for i in sorted(k.nodes)])
            for k in plan.kernels]


def test_a_reduction_keeps_out_ops_of_another_shape():
    # [3, 4] is neither the reduced [4, 8], its kept [4, 1] nor its rows [4]
    plan = _plan("return sum(x, axis=1) * z", "x: f32[4, 8], z: f32[3, 4]")
    assert _kernels(plan) == [("reduce", ["sum"]), ("pointwise", ["mul"])]


def test_an_operand_seen_through_a_view_is_not_fused():
    # s + transpose(s) reads the matmul's result at other positions than it writes
    plan = _plan("let s = x @ w; return s + transpose(s)", "x: f32[4, 4], w: f32[4, 4]")
    assert _kernels(plan) == [("matmul", ["matmul"]), ("pointwise", ["add"])]
    assert [why for _, _, why in plan.unfused] == [
        "an operand reaches kernel 0 through a view or another kernel"]


def test_no_join_makes_two_kernels_wait_for_each_other():
    # mul reads the matmul and max(matmul): inside the matmul kernel it would wait
    # for the reduce kernel, which waits for the matmul kernel
    plan = _plan("let m = x @ w; let r = max(m); return m * r", "x: f32[4, 4], w: f32[4, 4]")
    assert _kernels(plan) == [("matmul", ["matmul"]), ("reduce", ["max"]),
                              ("pointwise", ["mul"])]
    assert "joining would make two kernels wait for each other" in [
        why for _, _, why in plan.unfused]


def test_argmax_does_not_join_another_reduction():
    plan = _plan("let m = max(x, axis=1); return to_float(argmax(x, axis=1)) + m", "x: f32[4, 8]")
    homes = {op: k for k, (_, ops) in enumerate(_kernels(plan)) for op in ops
             if op in ("max", "argmax")}
    assert homes["max"] != homes["argmax"]
