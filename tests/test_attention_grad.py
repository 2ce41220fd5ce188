"""The attention backward (passes/vjp.py's attention rule, codegen/flash_bwd.py).

* Gradients of L = sum(attention(q, k, v) * w) through the generated kernels
  (Triton's interpreter) against the oracle on the same graph: T in {1, 17,
  64, 130} x head dim in {16, 24, 64}, every pair once, causal and not
  alternating so that every T and every head dim meets both (one head, batch
  1: the interpreter pays per program); float32 at the backend's tolerance
  (1e-4), a float64 subset at 1e-10. Every buffer the launcher allocates is
  recorded in a canary-guarded pool: none is [.., T, T].
* The same gradients against torch.autograd through
  F.scaled_dot_product_attention in float64 (relative 1e-10), causal, not,
  and with an additive float mask (whose own gradient needs the T x T
  logits' cotangent, passes/vjp.py `_captured`, emitted only when the mask is
  differentiated); and cross attention (queries and keys of
  different lengths, q/k and v of different head dims) through the kernels.
* The GPT model's --grad report: the attention backward is two kernels per
  block, and the launcher allocates no T x T buffer.
* sm_90: both backward kernels at head dims 64 and 128 compile with no spills.
"""

from __future__ import annotations

import json
import re
from functools import cache

import numpy as np
import pytest
from test_fused_patterns import RecordingPool
from util import MODELS

from ember import api, cli
from ember.backends import tolerance
from ember.codegen import aot
from ember.codegen.module import emit_triton
from ember.ir.graph import Graph
from ember.ir.ops import Op
from ember.kernel_cmds import aot_job
from ember.lang.lower import Options
from ember.lang.parser import parse
from ember.passes.grad import grad
from ember.runtime.cache import CodeCache
from ember.runtime.triton_backend import TritonProgram

torch = pytest.importorskip("torch")
pytest.importorskip("triton")

F = torch.nn.functional
SCALE = 0.125
_CACHE: CodeCache | None = None


@pytest.fixture(scope="module", autouse=True)
def code_cache(tmp_path_factory: pytest.TempPathFactory):
    """Generated modules go to a temporary code cache, not the user's."""
    global _CACHE
    _CACHE = CodeCache(tmp_path_factory.mktemp("code-cache"))
    compiled.cache_clear()
    yield
    compiled.cache_clear()


def loss_src(causal: bool, mask: bool = False) -> str:
    """L = sum(softmax(scores) @ v * w), the scores scaled, then causally
    masked or with an additive float mask added."""
    s = f"(q @ transpose(k)) * {SCALE}"
    s = f"where(causal_mask(T), {s}, -1e9)" if causal else s
    s = f"{s} + m" if mask else s
    extra = ", m: f32[T, T]" if mask else ""
    return f"""
model A {{
  def loss(q: f32[B, H, T, D], k: f32[B, H, T, D], v: f32[B, H, T, D], w: f32[B, H, T, D]{extra}
      ) -> f32[] {{
    return sum(softmax({s}) @ v * w)
  }}
}}
"""


@cache
def compiled(causal: bool, float64: bool, mask: bool = False) -> tuple[Graph, TritonProgram]:
    """The loss and its gradient with respect to every input."""
    program = parse(loss_src(causal, mask), "attention.ember")
    g = api.compile_program(program, "loss", options=Options(False, float64), grad=True,
                            grad_inputs=True)
    return g, TritonProgram(g, cache=_CACHE)


def draw(T: int, D: int, float64: bool, seed: int, mask: bool = False) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    dt = np.float64 if float64 else np.float32
    ins = {n: rng.standard_normal((1, 1, T, D)).astype(dt) for n in "qkvw"}
    if mask:
        ins["m"] = rng.standard_normal((T, T)).astype(dt)
    return ins


def _interpreter_case(T: int, D: int, causal: bool, float64: bool) -> None:
    g, prog = compiled(causal, float64)
    assert [n.op.value for n in g.nodes].count("attention_grad") == 1
    ins = draw(T, D, float64, seed=T * 100 + D)
    pool = RecordingPool()
    got = prog(ins, {}, pool=pool)
    assert pool.check() == []     # the canaries around every buffer survived
    # q, k, v, w and their gradients, o, lse and delta, the loss: no [.., T, T]
    assert {tuple(t.shape) for t in pool.made} <= {(1, 1, T, D), (1, 1, T), ()}
    want = api.run(g, ins, {})
    atol, rtol = tolerance(np.dtype(np.float64 if float64 else np.float32), "ieee")
    assert sorted(got) == sorted(want) == ["grad.k", "grad.q", "grad.v", "grad.w", "loss"]
    for name in want:
        assert not np.isnan(got[name]).any()
        np.testing.assert_allclose(got[name], want[name], atol=atol, rtol=rtol, err_msg=name)


GRID = [(T, D, (t + d) % 2 == 1) for t, T in enumerate([1, 17, 64, 130])
        for d, D in enumerate([16, 24, 64])]


@pytest.mark.parametrize("T,D,causal", GRID)
def test_backward_float32(T: int, D: int, causal: bool) -> None:
    _interpreter_case(T, D, causal, float64=False)


@pytest.mark.parametrize("T,D,causal", [(1, 24, True), (17, 64, False), (64, 16, True)])
def test_backward_float64(T: int, D: int, causal: bool) -> None:
    _interpreter_case(T, D, causal, float64=True)


# ---- torch.autograd -------------------------------------------------------------------

def torch_grads(ins: dict[str, np.ndarray], causal: bool) -> dict[str, np.ndarray]:
    leaves = {n: torch.tensor(a, requires_grad=True) for n, a in ins.items()}
    q, k, v, w = (leaves[n] for n in "qkvw")
    mask = leaves.get("m")
    o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal, scale=SCALE)
    names = sorted(leaves)
    grads = torch.autograd.grad((o * w).sum(), [leaves[n] for n in names])
    return {f"grad.{n}": gr.numpy() for n, gr in zip(names, grads)}


@pytest.mark.parametrize("causal,mask,backend", [(True, False, "triton"), (False, False, "numpy"),
                                                  (False, True, "triton")],
                         ids=["causal-triton", "full-oracle", "mask-triton"])
def test_gradients_match_torch_autograd(causal: bool, mask: bool, backend: str) -> None:
    g, prog = compiled(causal, True, mask)
    ins = draw(17, 24, True, seed=5, mask=mask)
    got = prog(ins, {}) if backend == "triton" else api.run(g, ins, {})
    want = torch_grads(ins, causal)
    assert sorted(want) == sorted(n for n in got if n.startswith("grad."))
    for name, ref in want.items():
        err = np.abs(got[name] - ref).max() / np.abs(ref).max()
        assert err < 1e-10, (name, err)


CROSS = """
model A {
  def loss(q: f64[B, T, 6], k: f64[B, S, 6], v: f64[B, S, 10], w: f64[B, T, 10]) -> f64[] {
    return sum(softmax(q @ transpose(k) * 0.3) @ v * w)
  }
}
"""


def test_cross_attention_gradients_match_torch(tmp_path) -> None:
    """Queries and keys of different lengths (19, 37), q/k and v of different
    head dims (6, 10): every mask edge apart, through the kernels."""
    g = api.compile_program(parse(CROSS, "cross.ember"), "loss", grad=True, grad_inputs=True)
    rng = np.random.default_rng(2)
    shapes = {"q": (2, 19, 6), "k": (2, 37, 6), "v": (2, 37, 10), "w": (2, 19, 10)}
    ins = {n: rng.standard_normal(s) for n, s in shapes.items()}
    got = TritonProgram(g, cache=CodeCache(tmp_path))(ins, {})
    t = {n: torch.tensor(a, requires_grad=True) for n, a in ins.items()}
    o = torch.softmax(t["q"] @ t["k"].transpose(-1, -2) * 0.3, dim=-1) @ t["v"]
    (o * t["w"]).sum().backward()
    for n, leaf in t.items():
        ref = leaf.grad.numpy()
        assert np.abs(got[f"grad.{n}"] - ref).max() < 1e-10 * np.abs(ref).max(), n


def test_a_mask_not_differentiated_adds_no_scores_node() -> None:
    """The grad pass emits the captured mask's T x T gradient path only when
    the mask is differentiated."""
    forward = api.compile_program(parse(loss_src(False, mask=True), "attention.ember"), "loss")
    for wrt, square in ((["q", "k", "v"], False), (["q", "m"], True)):
        g = grad(forward, wrt)
        nodes = [n for n in g.nodes if n.op not in (Op.INPUT, Op.ATTENTION, Op.ATTENTION_GRAD)
                 and n.tensor.shape[-2:] == ("T", "T")]
        assert bool(nodes) == square, [n.op.value for n in nodes]


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_backward_kernels_skip_masked_tiles_without_atomics(causal: bool) -> None:
    """Causal: the dk/dv kernel starts at the first query block that sees its
    keys, the dq kernel stops at its last row. No kernel uses an atomic, so
    every program writes only its own rows and runs give the same bits."""
    g, _ = compiled(causal, False)
    mod = emit_triton(g)
    src = {c.kind: c.source for c in mod.kernels}
    assert ("lo = pid_n * BLOCK_N // BLOCK_M * BLOCK_M" in src["attention_dkdv"]) is causal
    assert ("hi = tl.minimum((pid_m + 1) * BLOCK_M, T)" in src["attention_dq"]) is causal
    assert "atomic" not in mod.source


# ---- the GPT model -----------------------------------------------------------------------

def test_transformer_backward_is_two_kernels_per_block(
        capsys: pytest.CaptureFixture[str]) -> None:
    layers, T = 2, 16
    assert cli.main(["compile", str(MODELS / "transformer.ember"), "--entry", "loss", "--grad",
                     "--emit", "report", "--json", "--dims", f"B=2,T={T}"]) == 0
    rep = json.loads(capsys.readouterr().out)
    by_kind = {k["kind"]: k for k in rep["kernels"] if k["kind"].startswith("attention")}
    assert sorted(by_kind) == ["attention", "attention_dkdv", "attention_dq"]
    for k in by_kind.values():
        assert k["sites"] == k["launches"] == layers
    g = api.compile_file(MODELS / "transformer.ember", entry="loss", grad=True)
    launcher = emit_triton(g).source.split("def launch(", 1)[1]
    shapes = re.findall(r"pool\.empty\(\(([^)]*)\)", launcher)
    assert shapes and not [s for s in shapes if re.search(r"\bT, T,?$", s.strip())]


# ---- sm_90 ---------------------------------------------------------------------------------

def test_sm90_backward_kernels_do_not_spill(tmp_path) -> None:
    g, _ = compiled(True, False)
    mod = emit_triton(g)
    path = tmp_path / "attention.py"
    path.write_text(mod.source)
    codes = [c for c in mod.kernels if c.kind in ("attention_dkdv", "attention_dq")]
    assert len(codes) == 2
    jobs = [aot_job(c, path, {"B": 2, "H": 4, "T": 256, "D": D}) for D in (64, 128)
            for c in codes]
    for r in aot.compile_kernels(jobs):
        assert r.spills == 0 and aot.check_resources(r) == [], aot.check_resources(r)
