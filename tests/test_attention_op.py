"""The attention op (ir/ops.py) and the pass that makes it (passes/recognize.py).

* recognize-then-evaluate equals evaluating the original graph (the pipeline
  without recognize), on the oracle in float64, for every attention spelling
  of tests/test_fused_patterns.py, and for the spellings it must leave alone;
  each spelling's causal flag.
* The log-sum-exp as a real output: stored by the forward kernel when a node
  reads it, checked against the oracle and NumPy's logsumexp.
* The op's checks: shape rule and verifier errors, the printed form.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from test_fused_patterns import (
    ANTI_CAUSAL,
    EPILOGUE,
    NOT_ATTENTION,
    PROBS_OUT,
    VARIANTS,
    attention_src,
    qkv,
)
from util import compile_src

from ember import api
from ember.ir.dtypes import DType
from ember.ir.graph import Builder, Graph
from ember.ir.loc import DSLError
from ember.ir.ops import Op
from ember.ir.printer import print_graph
from ember.ir.verify import VerifyError, verify
from ember.passes.pipeline import PIPELINE, optimize
from ember.runtime.cache import CodeCache
from ember.runtime.triton_backend import TritonProgram

SPELLINGS = {"full": (attention_src(False), False), "causal": (attention_src(True), True),
             **VARIANTS, "epilogue": (EPILOGUE, False), "anti_causal": (ANTI_CAUSAL, False)}
LEFT_ALONE = {**NOT_ATTENTION, "probs_out": PROBS_OUT}


def without_recognize(src: str) -> Graph:
    """The optimized graph as it was before attention became an op."""
    g = compile_src(src, stage="ir")
    for name, run in PIPELINE:
        if name != "recognize":
            g = run(g)
    return g


def inputs(g: Graph, T: int = 19, D: int = 5) -> dict[str, np.ndarray]:
    ins = qkv(2, 3, T, D, float64=True, seed=T)
    rng = np.random.default_rng(1)
    ins["mask"] = np.where(rng.random((T, T)) < 0.3, -1e4, rng.standard_normal((T, T)))
    ins["w"] = ins["v"][..., ::-1].copy()
    return {n: ins[n] for n in g.input_names()}


def attention_nodes(g: Graph) -> list[int]:
    return [i for i, n in enumerate(g.nodes) if n.op is Op.ATTENTION]


@pytest.mark.parametrize("name", list(SPELLINGS))
def test_recognized_graph_computes_what_the_original_did(name: str) -> None:
    src, causal = SPELLINGS[name]
    g, before = verify(compile_src(src)), without_recognize(src)
    (a,) = attention_nodes(g)
    assert g.nodes[a].attrs["causal"] is causal
    assert not attention_nodes(before)
    assert not [n for n in g.nodes if n.op in (Op.EXP, Op.MAX)]   # the softmax is inside
    ins = inputs(g)
    got, want = api.run(g, ins, {}), api.run(before, ins, {})
    for out in want:
        np.testing.assert_allclose(got[out], want[out], rtol=1e-13, atol=1e-15)


@pytest.mark.parametrize("name", list(LEFT_ALONE))
def test_other_spellings_are_left_alone(name: str) -> None:
    src = LEFT_ALONE[name]
    g = compile_src(src)
    assert not attention_nodes(g)
    assert print_graph(g, with_loc=False) == print_graph(without_recognize(src), with_loc=False)


def test_recognize_runs_before_cse_and_dce() -> None:
    names = [name for name, _ in PIPELINE]
    assert names.index("recognize") < names.index("cse") < names.index("dce")


def test_the_region_keeps_the_score_computation() -> None:
    g = compile_src(attention_src(True))
    text = print_graph(g, with_loc=False)
    assert "= attention %0 %1 %2 causal=True" in text
    body = g.nodes[attention_nodes(g)[0]].attrs["body"]
    assert [n.op for n in body.nodes] == [Op.INPUT, Op.CONST, Op.MUL, Op.IOTA, Op.IOTA, Op.GE,
                                          Op.CONST, Op.WHERE]
    assert "graph score_mod(s) {" in text


def test_additive_mask_is_captured() -> None:
    src, _ = VARIANTS["additive_mask"]
    g = compile_src(src)
    (a,) = attention_nodes(g)
    mask = g.input_names().index("mask")
    assert g.nodes[a].srcs[3:] == (g.inputs[mask],)
    body = g.nodes[a].attrs["body"]
    assert [body.nodes[i].attrs["name"] for i in body.inputs] == ["s", "c0"]


# ---- lse ---------------------------------------------------------------------------------

def with_lse(g: Graph) -> Graph:
    """g with the attention op's log-sum-exp as a second output."""
    b = Builder(g.name, list(g.nodes))
    (a,) = attention_nodes(g)
    lse = b.add(Op.GET, (a,), {"index": 1}, g.nodes[a].loc)
    return verify(b.build(g.inputs, (*g.outputs, lse), (*g.output_names, "lse")))


@pytest.mark.parametrize("T,causal", [(1, True), (17, False), (130, True)])
def test_lse_is_a_real_output(T: int, causal: bool, tmp_path) -> None:
    g = with_lse(compile_src(attention_src(causal), float64=False))
    ins = qkv(1, 2, T, 24, float64=False, seed=T)
    got = TritonProgram(g, cache=CodeCache(tmp_path))(ins, {})
    want = api.run(g, ins, {})
    np.testing.assert_allclose(got["lse"], want["lse"], rtol=1e-5, atol=1e-5)
    q, k = (ins[n].astype(np.float64) for n in "qk")
    s = q @ np.swapaxes(k, -1, -2) * 0.125
    if causal:
        s = np.where(np.tril(np.ones((T, T), bool)), s, -1e9)
    m = s.max(-1, keepdims=True)
    exact = (m + np.log(np.exp(s - m).sum(-1, keepdims=True)))[..., 0]
    np.testing.assert_allclose(want["lse"], exact, rtol=1e-5, atol=1e-5)


# ---- checks ------------------------------------------------------------------------------

def test_shape_rule_rejects_mismatched_heads() -> None:
    g = compile_src(attention_src(False), float64=False)
    body = g.nodes[attention_nodes(g)[0]].attrs["body"]
    b = Builder("g")
    ins = tuple(b.add(Op.INPUT, (), {"name": n, "shape": (2, 7, d), "dtype": DType.F32})
                for n, d in (("q", 4), ("k", 5), ("v", 3)))
    with pytest.raises(DSLError, match=r"attention expects q \[\.\.\., T, DK\]"):
        b.add(Op.ATTENTION, ins, {"body": body, "causal": False})


def test_verifier_rejects_a_region_of_the_wrong_type() -> None:
    g = optimize(compile_src(attention_src(False), float64=False, stage="ir"))
    (a,) = attention_nodes(g)
    f64 = compile_src(attention_src(False), float64=True)
    wrong = f64.nodes[attention_nodes(f64)[0]].attrs["body"]   # f64 scores, f32 operands
    nodes = list(g.nodes)
    nodes[a] = replace(nodes[a], attrs={**nodes[a].attrs, "body": wrong})
    with pytest.raises(VerifyError, match="attention"):
        verify(Graph(g.name, tuple(nodes), g.inputs, g.outputs, g.output_names))


def test_causal_query_blocks_run_longest_first() -> None:
    from util import MODELS

    from ember.codegen.module import emit_triton
    g = api.compile_file(MODELS / "transformer.ember", "forward", dims={"B": 2, "T": 64})
    (code,) = [k for k in emit_triton(g).kernels if k.kind == "attention"]
    assert "pid_m = tl.num_programs(0) - 1 - tl.program_id(0)" in code.source
