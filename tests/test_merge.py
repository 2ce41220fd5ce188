"""merge_projections (passes/merge.py): matmuls of one input by different
parameter weights become one matmul by the weights side by side."""

from __future__ import annotations

import numpy as np
import pytest
from util import compile_src

from ember import api
from ember.ir.ops import Op
from ember.passes.merge import merge_projections

SRC = """
model M {{
  param wq: f32[8, 4] = normal(1.0)
  param bq: f32[4] = normal(1.0)
  param wk: f32[8, 6] = normal(1.0)
  param bk: f32[6] = normal(1.0)
  param wv: f32[{wv}] = normal(1.0)
  param bv: f32[{bv}] = normal(1.0)
  def forward(x: f32[B, T, 8]) {{
    let q = x @ wq + bq
    let k = x @ wk + bk
    let v = x @ wv {vbias}
    return q * 2.0, k, v
  }}
}}
"""


def _ops(g) -> list[Op]:
    return [n.op for n in g.nodes]


def _check_same_values(src: str) -> None:
    """The pipeline with the merge against the graph before it, in float64."""
    g = compile_src(src, stage="opt")
    ref = compile_src(src, stage="cse")   # every pass before merge_projections
    params = api.init_params(g, seed=0)
    x = np.random.default_rng(0).standard_normal((2, 3, 8))
    for a, b in zip(api.run(g, {"x": x}, params).values(),
                    api.run(ref, {"x": x}, params).values()):
        np.testing.assert_allclose(a, b, rtol=1e-12)


def test_three_projections_with_biases_are_one_matmul() -> None:
    src = SRC.format(wv="8, 5", bv="5", vbias="+ bv")
    g = compile_src(src, stage="opt")
    assert _ops(g).count(Op.MATMUL) == 1 and _ops(g).count(Op.SLICE) == 3
    _check_same_values(src)


def test_a_bias_missing_on_one_member_merges_the_matmuls_only() -> None:
    src = SRC.format(wv="8, 5", bv="5", vbias="")
    g = compile_src(src, stage="opt")
    assert _ops(g).count(Op.MATMUL) == 1 and _ops(g).count(Op.ADD) == 2
    _check_same_values(src)


def test_weights_of_another_width_are_left_alone() -> None:
    src = SRC.format(wv="8, 5", bv="5", vbias="+ bv").replace("x @ wv", "x[:, :, 0:4] @ wv") \
        .replace("f32[8, 5]", "f32[4, 5]")
    g = compile_src(src, stage="opt")
    assert _ops(g).count(Op.MATMUL) == 2
    _check_same_values(src)


@pytest.mark.parametrize("model", ["transformer"])
def test_the_gpt_block_runs_one_projection_matmul(model: str) -> None:
    from util import MODELS
    g = api.compile_file(MODELS / f"{model}.ember", "forward")
    layers = 2
    assert _ops(g).count(Op.MATMUL) == layers * 4 + 1  # qkv, wo, w1, w2; the head
    assert merge_projections(g) == g or _ops(merge_projections(g)) == _ops(g)  # idempotent
