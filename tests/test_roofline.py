"""The report's roofline estimate and its byte counts (codegen/roofline.py)."""

from __future__ import annotations

import pytest

from ember import api
from ember.codegen import roofline
from ember.codegen.module import emit_triton
from ember.codegen.report import report
from ember.ir.dtypes import DType
from ember.lang.parser import parse

pytest.importorskip("triton")


def _report(src: str, dims: dict[str, int], precision: str = "ieee") -> dict:
    g = api.compile_program(parse(src, "m.ember"), "forward", dims=dims)
    return report(emit_triton(g, precision=precision), dims)


MATMUL = """
model M {
  param w: f32[2048, 2048] = normal(1.0)
  def forward(x: f32[B, 2048]) -> f32[B, 2048] { return x @ w }
}
"""


def test_a_big_fp32_matmul_is_compute_bound_at_the_fma_peak_and_tf32_moves_it() -> None:
    ieee = _report(MATMUL, {"B": 4096})
    (k,) = ieee["kernels"]
    assert k["flops"] == 2 * 4096 * 2048 * 2048
    assert k["bound"] == "compute"
    assert k["est_us"] == pytest.approx(k["flops"] / 67e12 * 1e6)
    (t,) = _report(MATMUL, {"B": 4096}, "tf32")["kernels"]
    assert t["est_us"] == pytest.approx(t["flops"] / 495e12 * 1e6)


def test_elementwise_is_memory_bound_at_the_bandwidth() -> None:
    src = "model M { def forward(x: f32[N]) -> f32[N] { return relu(x) * 2.0 } }"
    (k,) = _report(src, {"N": 1 << 20})["kernels"]
    assert k["bytes"] == 2 * 4 * (1 << 20) and k["bound"] == "memory"
    assert k["est_us"] == pytest.approx(k["bytes"] / 3.35e12 * 1e6)


def test_a_lookup_is_charged_for_the_rows_it_reads() -> None:
    src = """
model M {
  param tok: f32[5000, 16] = normal(1.0)
  def forward(ids: i32[B]) -> f32[B, 16] { return tok[ids] * 2.0 }
}
"""
    (k,) = _report(src, {"B": 4})["kernels"]
    # ids (4 x i32), 4 rows of the table read, the [4, 16] result written, and
    # the index check's 16-byte record (codegen/checks.py); not the 5000 rows
    assert k["bytes"] == 4 * 4 + 4 * 16 * 4 + 4 * 16 * 4 + 16


def test_peaks_follow_the_operands() -> None:
    assert roofline.arithmetic("matmul", DType.F32, "ieee") == "f32"
    assert roofline.arithmetic("matmul", DType.F32, "tf32") == "tf32"
    assert roofline.arithmetic("pointwise", DType.F32, "tf32") == "f32"
    assert roofline.arithmetic("conv", DType.F64, "ieee") == "f64"


def test_mixed_precision_dots_run_at_the_tensor_core_peak() -> None:
    g = api.compile_program(parse(MATMUL, "m.ember"), "forward", dims={"B": 4096},
                            precision="bf16-mixed")
    rep = report(emit_triton(g), {"B": 4096})
    (k,) = [k for k in rep["kernels"] if k["kind"] == "matmul"]
    assert k["est_us"] == pytest.approx(k["flops"] / 989e12 * 1e6)
