"""Identical kernels are emitted once: a model's repeated blocks launch one kernel
from many sites, and the reports count distinct kernels and launches apart.

Two sites share a kernel when its text (with buffers named by position and
locals renumbered), its argument types and its launch all agree, so sharing
must never change a result: the shared kernels are run against the oracle.
"""

from __future__ import annotations

import io
import json
import re
from contextlib import redirect_stdout
from pathlib import Path

import numpy as np
import pytest
from util import MODELS, compile_src

pytest.importorskip("triton")

from ember import api, cli  # noqa: E402 - after the importorskip on purpose
from ember.codegen import aot, canon  # noqa: E402
from ember.codegen.module import Module, emit_triton  # noqa: E402
from ember.codegen.report import describe, report  # noqa: E402
from ember.runtime.pool import GuardedPool  # noqa: E402
from ember.runtime.triton_backend import TritonProgram  # noqa: E402

# A GPT whose embedding is layer-normed (as in BLOOM), so the first block reads a
# stored activation like every later block does (models/transformer.ember's first
# block instead fuses the embedding into its kernels: see the last test).
GPT = """layer LayerNorm(d: int) {
  param weight: f32[d] = ones
  param bias: f32[d] = zeros
  def forward(x: f32[B, T, d]) -> f32[B, T, d] { return layer_norm(x, weight, bias) }
}
layer Attention(d: int, heads: int) {
  const dh = d // heads
  param wq: f32[d, d] = normal(0.2)
  param wk: f32[d, d] = normal(0.2)
  param wv: f32[d, d] = normal(0.2)
  param wo: f32[d, d] = normal(0.2)
  def split_heads(x: f32[B, T, d]) -> f32[B, heads, T, dh] {
    return transpose(reshape(x, B, T, heads, dh), 1, 2)
  }
  def forward(x: f32[B, T, d]) -> f32[B, T, d] {
    let q = split_heads(x @ wq)
    let k = split_heads(x @ wk)
    let v = split_heads(x @ wv)
    let p = softmax(where(causal_mask(T), (q @ transpose(k)) * dh ** -0.5, -1e9))
    return reshape(transpose(p @ v, 1, 2), B, T, d) @ wo
  }
}
layer Block(d: int, heads: int) {
  layer ln1: LayerNorm(d)
  layer attn: Attention(d, heads)
  layer ln2: LayerNorm(d)
  param w1: f32[d, 2 * d] = normal(0.2)
  param w2: f32[2 * d, d] = normal(0.2)
  def forward(x: f32[B, T, d]) -> f32[B, T, d] {
    let x1 = x + attn(ln1(x))
    return x1 + gelu(ln2(x1) @ w1) @ w2
  }
}
model GPT {
  param tok: f32[16, 8] = normal(1.0)
  layer ln_e: LayerNorm(8)
  layer blocks: Block(8, 2)[LAYERS]
  layer ln_f: LayerNorm(8)
  param head: f32[8, 16] = normal(0.2)
  def forward(ids: i32[B, T]) -> f32[B, T, 16] {
    let x = ln_e(tok[ids])
    for blk in blocks { x = blk(x) }
    return ln_f(x) @ head
  }
}
"""
# ln1, [wq wk wv] laid side by side, q k v (one matmul: passes/merge.py), attention,
# wo + residual, ln2, w1 + gelu, w2 + residual
PER_BLOCK = 8


def gpt(layers: int) -> Module:
    return emit_triton(compile_src(GPT.replace("LAYERS", str(layers)), float64=False))


def bodies(mod: Module) -> set[str]:
    return {"\n".join(code.body) for code in mod.kernels}


def test_repeated_blocks_add_launches_not_kernels() -> None:
    one, two, four = gpt(1), gpt(2), gpt(4)
    assert len(four.kernels) == len(one.kernels) and bodies(four) == bodies(one)
    for layers, mod in ((1, one), (2, two), (4, four)):
        # ln_f and head; ln_e shares one kernel with the first block's ln1
        assert len(mod.launches) == 2 + PER_BLOCK * layers
        assert mod.source.count("@triton.jit") == len(mod.kernels) + 2  # + _tanh, _pow
        assert sum(len(code.sites) for code in mod.kernels) == len(mod.launches)
    # the q, k and v projections of a block are one matmul, and every block's share a kernel
    (proj,) = [c for c in four.kernels if "test.ember:16" in c.source and c.kind == "matmul"]
    assert len(proj.sites) == 4 and re.search(r"# matmul @ test\.ember:16$", proj.source, re.M)


def test_kernel_text_names_no_site() -> None:
    for code in gpt(2).kernels:
        # no launcher variable (v12, blocks_0_attn_wq, tok, ...) and no IR node number
        text = "\n".join([*code.params, *code.body])
        assert not re.search(r"\b(v\d+|blocks_\d\w*|tok|head|ln_\w+)(_ptr)?\b", text), code.name
        assert "in0_ptr" in code.params and "out0_ptr" in code.params
        # node-numbered locals (add22, red9) are renumbered 0, 1, 2, ... in order of use
        numbers = [m[2] for m in map(canon.NODE_LOCAL.fullmatch, canon.IDENT.findall(text)) if m]
        assert list(map(int, dict.fromkeys(numbers))) == list(range(len(set(numbers))))


def test_shared_kernels_match_the_oracle() -> None:
    g = compile_src(GPT.replace("LAYERS", "3"), float64=False)
    params = api.init_params(g, seed=0)
    ids = np.random.default_rng(1).integers(0, 16, (2, 5)).astype(np.int32)
    pool = GuardedPool()
    got = TritonProgram(g)({"ids": ids}, params, pool=pool)["forward"]
    assert pool.check() == []
    # float32, fp32 (ieee) dots over K <= 16: the backends' 1e-4 tolerance
    np.testing.assert_allclose(got, api.run(g, {"ids": ids}, params)["forward"],
                               rtol=1e-4, atol=1e-4)


LOOP = """model M {
  param w: f32[4, 4] = normal(0.5)
  def forward(x: f32[B, 4], y: f64[B, 4], steps: f32[T]) -> (f32[B, 4], f64[B, 4]) {
    let h = tanh(x @ w)
    for t in range(T) { h = tanh(h @ w) }
    return h, exp(y)
  }
}"""


def test_a_loop_body_shares_the_kernel_of_the_code_before_it() -> None:
    g = compile_src(LOOP, float64=False)
    mod = emit_triton(g)
    shared = [c for c in mod.kernels if len(c.sites) == 2]
    assert [c.kind for c in shared] == ["matmul"]
    T = 3
    rep = report(mod, {"B": 2, "T": T})
    (k,) = [k for k in rep["kernels"] if k["name"] == shared[0].name]
    assert (k["sites"], k["launches"]) == (2, 1 + T)
    assert rep["total"]["launches"] == sum(s["launches"] for s in rep["launches"])
    rng = np.random.default_rng(0)
    inputs = {"x": rng.standard_normal((2, 4)).astype(np.float32),
              "y": rng.standard_normal((2, 4)), "steps": np.zeros(T, np.float32)}
    params = api.init_params(g, seed=0)
    got = TritonProgram(g)(inputs, params)
    want = api.run(g, inputs, params)
    np.testing.assert_allclose(got["out0"], want["out0"], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(got["out1"], want["out1"], rtol=1e-10, atol=1e-10)


def test_same_text_other_dtypes_is_another_kernel() -> None:
    src = """model M {
  def forward(a: f32[B, 4], b: f32[B, 4], c: f64[B, 4]) -> (f32[B, 4], f32[B, 4], f64[B, 4]) {
    return exp(a), exp(b), exp(c)
  }
}"""
    mod = emit_triton(compile_src(src, float64=False))
    assert [len(c.sites) for c in mod.kernels] == [2, 1]
    assert mod.kernels[0].body == mod.kernels[1].body
    assert mod.kernels[0].signature() != mod.kernels[1].signature()


def test_comments_merge_across_sites() -> None:
    assert canon.merge(["add @ m.ember:7"] * 3) == "add @ m.ember:7"
    assert canon.merge(["add @ m.ember:9", "add @ m.ember:7", "add @ m.ember:9"]) == \
        "add @ m.ember:7, 9"
    assert canon.merge(["online softmax", "online softmax"]) == "online softmax"
    assert canon.merge(["let a = x @ w", "let b = x @ v"]) == "let a = x @ w; let b = x @ v"


def run_cli(args: list[str]) -> str:
    out = io.StringIO()
    with redirect_stdout(out):
        assert cli.main(args) == 0
    return out.getvalue()


@pytest.fixture(scope="module")
def gpt4_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("dedup") / "gpt4.ember"
    path.write_text(GPT.replace("LAYERS", "4"))
    return path


def test_reports_count_kernels_and_launches_apart(gpt4_file: Path) -> None:
    n, launches = len(gpt(4).kernels), 2 + PER_BLOCK * 4
    rep = json.loads(run_cli(["compile", str(gpt4_file), "--emit", "report", "--json",
                              "--dims", "B=2,T=8"]))
    assert rep["total"]["kernels"] == len(rep["kernels"]) == n
    assert rep["total"]["launches"] == rep["total"]["launch_sites"] == launches
    assert sum(k["sites"] for k in rep["kernels"]) == len(rep["launches"]) == launches
    assert rep["total"]["bytes"] == sum(k["bytes"] * k["launches"] for k in rep["kernels"])
    table = run_cli(["compile", str(gpt4_file), "--emit", "report", "--dims", "B=2,T=8"])
    assert f"{launches} launches of {n} distinct kernels" in table
    kernels = run_cli(["compile", str(gpt4_file), "--emit", "kernels"])
    assert f"{launches} launch sites of {n} distinct kernels" in kernels
    assert kernels.count("[matmul], 4 launch sites") == 4  # qkv, wo, w1, w2: one per block


def test_sm90_compiles_each_distinct_kernel_once(gpt4_file: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    jobs: list[dict] = []

    def compile_kernels(batch: list[dict]) -> list[aot.KernelResources]:
        jobs.extend(batch)
        return [aot.KernelResources(j["fn_name"], 32, 0, 0, j["num_warps"]) for j in batch]

    monkeypatch.setattr(aot, "compile_kernels", compile_kernels)
    run_cli(["compile", str(gpt4_file), "--target", "sm_90", "--dims", "B=2,T=8"])
    names = [j["fn_name"] for j in jobs]
    assert len(names) == len(set(names)) == len(gpt(4).kernels)


def test_transformer_blocks_after_the_first_add_no_kernels() -> None:
    # the first block fuses the embedding (tok[ids] + pos) into its layer norm and
    # residual, so it has kernels of its own; every later block reuses block 1's
    src = (MODELS / "transformer.ember").read_text()
    mods = {n: emit_triton(compile_src(src.replace("LAYERS = 2", f"LAYERS = {n}"),
                                       float64=False)) for n in (2, 4)}
    assert bodies(mods[4]) == bodies(mods[2])
    assert len(mods[4].launches) - len(mods[2].launches) == 2 * PER_BLOCK
    assert describe(mods[4]).count("[attention], 4 launch sites") == 1
