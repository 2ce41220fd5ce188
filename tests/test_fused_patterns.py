"""The pattern kernels (passes/patterns.py, codegen/fused.py) against the oracle.

* attention: `softmax((q @ k^T) <scale/mask>) @ v` becomes an attention op
  (passes/recognize.py) and ONE flash-attention kernel. Checked in Triton's
  interpreter at T in {1, 17, 64, 130} x D in {16, 24, 64}, causal and not
  (float32 at the backend's tolerance, a float64 subset at 1e-10), in a
  GuardedPool whose canaries must survive, with every buffer the launcher
  allocates recorded: only the output, no T x T buffer (the log-sum-exp is
  stored only where a backward reads it: tests/test_attention_op.py).
  Other spellings (division, additive mask, a hand-written softmax) fuse too;
  graphs whose probabilities are needed elsewhere must not, and still compute.
* gates: an LSTM's `x_t @ W_ih + h @ W_hh + b` split into i, f, g, o and the cell
  update are ONE kernel per step whose outputs are exactly the two carries.
* sm_90: the attention (head dim 64, 128) and gates (hidden 128) kernels compiled
  ahead of time in one batch: no spills, shared memory within the H100 limit.
* tanh (a custom `_tanh` in the kernels): within 1 ulp of np.tanh in float32.
* reports: the transformer's two attention kernels and the LSTM's step kernel.
"""

from __future__ import annotations

import json
import re
from functools import cache

import numpy as np
import pytest
from util import LSTM_STEPS, MODELS, compile_src

from ember import api, cli
from ember.backends import tolerance
from ember.codegen import aot
from ember.codegen.module import emit_triton
from ember.ir.graph import Graph
from ember.ir.ops import Op
from ember.kernel_cmds import aot_job
from ember.passes.fuse import Plan, fuse
from ember.runtime.cache import CodeCache
from ember.runtime.pool import GuardedPool
from ember.runtime.triton_backend import TritonProgram

torch = pytest.importorskip("torch")
pytest.importorskip("triton")

TOL64 = 1e-10
F32 = tolerance(np.dtype(np.float32), "ieee")
_CACHE: CodeCache | None = None


@pytest.fixture(scope="module", autouse=True)
def code_cache(tmp_path_factory: pytest.TempPathFactory):
    """Generated modules go to a temporary code cache, not the user's."""
    global _CACHE
    _CACHE = CodeCache(tmp_path_factory.mktemp("code-cache"))
    compiled.cache_clear()
    yield _CACHE
    compiled.cache_clear()


class RecordingPool(GuardedPool):
    """A GuardedPool that keeps every tensor it hands out, in allocation order."""

    def __init__(self) -> None:
        super().__init__()
        self.made: list[torch.Tensor] = []

    def empty(self, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        t = super().empty(shape, dtype)
        self.made.append(t)
        return t


@cache
def compiled(src: str, float64: bool) -> tuple[Graph, TritonProgram]:
    g = compile_src(src, float64=float64)
    return g, TritonProgram(g, cache=_CACHE)


def run_triton(src: str, float64: bool, inputs: dict[str, np.ndarray],
               params: dict[str, np.ndarray] | None = None
               ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], RecordingPool]:
    """(triton outputs, oracle outputs, the pool); the pool's canaries are intact."""
    g, prog = compiled(src, float64)
    pool = RecordingPool()
    got = prog(inputs, params or {}, pool=pool)
    assert pool.check() == []
    want = api.run(g, inputs, params or {})
    return got, want, pool


def assert_close(got: np.ndarray, want: np.ndarray, float64: bool) -> float:
    """|got - want| <= atol + rtol |want| at the backend's tolerance; the max error."""
    assert got.dtype == want.dtype and got.shape == want.shape
    assert not np.isnan(got).any()
    atol, rtol = (TOL64, TOL64) if float64 else F32
    np.testing.assert_allclose(got, want, atol=atol, rtol=rtol)
    return float(np.abs(got.astype(np.float64) - want).max(initial=0.0))


def kinds(plan: Plan) -> list[str]:
    return [k.kind for k in plan.kernels]


# ---- attention ------------------------------------------------------------------------

QKV = "q: f32[B, H, T, D], k: f32[B, H, T, D], v: f32[B, H, T, D]"
SCALE = 0.125


def attention_src(causal: bool) -> str:
    probs = ("softmax(where(causal_mask(T), s, -1e9))" if causal else "softmax(s)")
    return f"""
model Attn {{
  def forward({QKV}) -> f32[B, H, T, D] {{
    let s = (q @ transpose(k)) * {SCALE}
    return {probs} @ v
  }}
}}
"""


def qkv(B: int, H: int, T: int, D: int, float64: bool, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    dt = np.float64 if float64 else np.float32
    return {n: rng.standard_normal((B, H, T, D)).astype(dt) for n in "qkv"}


def assert_one_attention_kernel(g: Graph) -> None:
    """One kernel, of kind attention, for the attention op, storing exactly the
    graph's output; no node computes a value of the scores' [.., T, T] shape."""
    plan = fuse(g)
    assert kinds(plan) == ["attention"]
    (kern,) = plan.kernels
    assert g.nodes[kern.anchor].op is Op.ATTENTION
    T = g.nodes[g.outputs[0]].tensor.shape[-2]
    assert not [n for n in g.nodes if n.op not in (Op.ATTENTION, Op.INPUT)
                and n.tensor.shape[-2:] == (T, T)]
    assert kern.outputs == list(g.outputs)


def _attention_case(T: int, D: int, causal: bool, float64: bool) -> float:
    B, H = (2, 3) if T <= 17 else (1, 2)   # the interpreter pays per program
    src = attention_src(causal)
    g, _ = compiled(src, float64)
    assert_one_attention_kernel(g)
    ins = qkv(B, H, T, D, float64, seed=T * 100 + D)
    got, want, pool = run_triton(src, float64, ins)
    err = assert_close(got["forward"], want["forward"], float64)
    # Exactly one buffer, the output: no [.., T, T] scores (and no log-sum-exp,
    # which no backward reads here).
    assert [tuple(t.shape) for t in pool.made] == [(B, H, T, D)]
    return err


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("D", [16, 24, 64])
@pytest.mark.parametrize("T", [1, 17, 64, 130])
def test_attention_float32(T: int, D: int, causal: bool) -> None:
    _attention_case(T, D, causal, float64=False)


@pytest.mark.parametrize("T,D,causal", [(1, 24, True), (17, 24, True), (64, 16, False),
                                        (130, 64, True), (130, 24, False)])
def test_attention_float64(T: int, D: int, causal: bool) -> None:
    _attention_case(T, D, causal, float64=True)


def test_attention_launcher_allocates_no_scores_buffer() -> None:
    mod = emit_triton(compile_src(attention_src(True), float64=False))
    launcher = mod.source[mod.source.index("def launch("):]
    shapes = re.findall(r"pool\.empty\(\(([^)]*)\)", launcher)
    assert shapes == ["B, H, T, D"]
    (site,) = mod.launches
    assert site.kernel.kind == "attention" and site.extras == {}
    assert "hi = tl.minimum(" in site.code.source   # causal: later key tiles are skipped


VARIANTS = {
    # scaled by a division, not a product
    "divide": (f"""
model A {{
  def forward({QKV}) -> f32[B, H, T, D] {{
    let s = q @ transpose(k)
    return softmax(s / 8.0) @ v
  }}
}}
""", False),
    # an additive float mask (an input) instead of where(causal_mask)
    "additive_mask": (f"""
model A {{
  def forward({QKV}, mask: f32[T, T]) -> f32[B, H, T, D] {{
    let s = (q @ transpose(k)) * {SCALE}
    return softmax(s + mask) @ v
  }}
}}
""", False),
    # the softmax written out by hand, and the mask applied before the scale
    "by_hand": (f"""
model A {{
  def forward({QKV}) -> f32[B, H, T, D] {{
    let s = where(causal_mask(T), q @ transpose(k), -1e9) * {SCALE}
    let e = exp(s - max(s, axis=-1, keepdims=true))
    return (e / sum(e, axis=-1, keepdims=true)) @ v
  }}
}}
""", True),
}


@pytest.mark.parametrize("name", list(VARIANTS))
def test_attention_spellings_fuse(name: str) -> None:
    src, causal = VARIANTS[name]
    g, _ = compiled(src, False)
    assert_one_attention_kernel(g)
    assert [n.attrs["causal"] for n in g.nodes if n.op is Op.ATTENTION] == [causal]
    T, D = 130, 24
    ins = qkv(1, 2, T, D, False, seed=7)
    if name == "additive_mask":
        rng = np.random.default_rng(8)
        ins["mask"] = np.where(rng.random((T, T)) < 0.3, -1e4,
                               rng.standard_normal((T, T))).astype(np.float32)
    got, want, pool = run_triton(src, False, ins)
    assert_close(got["forward"], want["forward"], False)
    assert [tuple(t.shape) for t in pool.made] == [(1, 2, T, D)]


NOT_ATTENTION = {
    # the probabilities are read by two matmuls
    "probs_read_twice": f"""
model A {{
  def forward({QKV}, w: f32[B, H, T, D]) -> f32[B, H, T, D] {{
    let p = softmax((q @ transpose(k)) * {SCALE})
    return p @ v + p @ w
  }}
}}
""",
    # the scores are read outside the softmax
    "scores_read_twice": f"""
model A {{
  def forward({QKV}) -> f32[B, H, T, D] {{
    let s = (q @ transpose(k)) * {SCALE}
    return softmax(s) @ v + s @ v
  }}
}}
""",
    # softmax over the queries, not the keys
    "softmax_over_queries": f"""
model A {{
  def forward({QKV}) -> f32[B, H, T, D] {{
    return softmax((q @ transpose(k)) * {SCALE}, axis=2) @ v
  }}
}}
""",
}


@pytest.mark.parametrize("name", list(NOT_ATTENTION))
def test_not_attention_computes_correctly(name: str) -> None:
    src = NOT_ATTENTION[name]
    g, _ = compiled(src, False)
    assert "attention" not in kinds(fuse(g))
    ins = qkv(1, 2, 40, 24, False, seed=3)
    ins["w"] = ins["v"][..., ::-1].copy()
    ins = {k: v for k, v in ins.items() if k in g.input_names()}
    got, want, _ = run_triton(src, False, ins)
    assert_close(got["forward"], want["forward"], False)


PROBS_OUT = f"""
model A {{
  def forward({QKV}) -> (f32[B, H, T, D], f32[B, H, T, T]) {{
    let p = softmax((q @ transpose(k)) * {SCALE})
    return p @ v, p
  }}
}}
"""


def test_probabilities_as_output_are_not_fused() -> None:
    g, _ = compiled(PROBS_OUT, False)
    assert "attention" not in kinds(fuse(g))
    got, want, _ = run_triton(PROBS_OUT, False, qkv(1, 2, 17, 24, False))
    for name in want:
        assert_close(got[name], want[name], False)


EPILOGUE = f"""
model A {{
  def forward({QKV}) -> f32[B, H, T, D] {{
    return tanh(softmax((q @ transpose(k)) * {SCALE}) @ v)
  }}
}}
"""


def test_attention_with_elementwise_epilogue() -> None:
    got, want, _ = run_triton(EPILOGUE, False, qkv(1, 2, 17, 24, False))
    assert_close(got["forward"], want["forward"], False)


ANTI_CAUSAL = f"""
model A {{
  def forward({QKV}) -> f32[B, H, T, D] {{
    let s = (q @ transpose(k)) * {SCALE}
    return softmax(where(causal_mask(T), -1e9, s)) @ v
  }}
}}
"""


def test_reversed_causal_mask_is_not_treated_as_causal() -> None:
    got, want, _ = run_triton(ANTI_CAUSAL, False, qkv(1, 2, 130, 24, False))
    assert_close(got["forward"], want["forward"], False)


# ---- LSTM (gates) ----------------------------------------------------------------------

N_IN = 5


def lstm_src(hidden: int) -> str:
    state = f"(f32[B, {hidden}], f32[B, {hidden}])"
    return f"""
model Cell {{
  param w_ih: f32[{N_IN}, {4 * hidden}] = glorot_uniform
  param w_hh: f32[{hidden}, {4 * hidden}] = glorot_uniform
  param b: f32[{4 * hidden}] = zeros

  def forward(x: f32[B, T, {N_IN}], h0: f32[B, {hidden}], c0: f32[B, {hidden}]) -> {state} {{
    let h = h0
    let c = c0
{LSTM_STEPS}    return h, c
  }}
}}
"""


def lstm_data(hidden: int, steps: int, float64: bool) -> tuple[dict, dict]:
    rng = np.random.default_rng(hidden * 10 + steps)
    dt = np.float64 if float64 else np.float32
    B = 3
    ins = {"x": rng.standard_normal((B, steps, N_IN)), "h0": rng.uniform(-1, 1, (B, hidden)),
           "c0": rng.standard_normal((B, hidden))}
    s = 1 / np.sqrt(hidden)
    params = {"w_ih": rng.uniform(-s, s, (N_IN, 4 * hidden)),
              "w_hh": rng.uniform(-s, s, (hidden, 4 * hidden)),
              "b": rng.standard_normal(4 * hidden) * 0.5}
    return ({k: v.astype(dt) for k, v in ins.items()},
            {k: v.astype(dt) for k, v in params.items()})


def _lstm_case(hidden: int, steps: int, float64: bool) -> float:
    src = lstm_src(hidden)
    g, _ = compiled(src, float64)
    plan = fuse(g)
    ((_, body),) = plan.loops.items()
    assert kinds(body) == ["gates"]          # one kernel per step
    (kern,) = body.kernels
    assert sorted(kern.outputs) == sorted(body.graph.outputs)  # exactly the carries
    assert len(kern.outputs) == 2
    ins, params = lstm_data(hidden, steps, float64)
    got, want, pool = run_triton(src, float64, ins, params)
    # the input projection of every step, hoisted out of the loop as one GEMM;
    # then per step the two carries, nothing else (the gates never reach memory)
    assert [tuple(t.shape) for t in pool.made] == ([(steps, 3, 4 * hidden)]
                                                  + [(3, hidden)] * (2 * steps))
    return max(assert_close(got[n], want[n], float64) for n in want)


@pytest.mark.parametrize("steps", [1, 6])
@pytest.mark.parametrize("hidden", [8, 33, 128])
def test_lstm_float32(hidden: int, steps: int) -> None:
    _lstm_case(hidden, steps, float64=False)


@pytest.mark.parametrize("hidden,steps", [(8, 1), (33, 6), (128, 6)])
def test_lstm_float64(hidden: int, steps: int) -> None:
    _lstm_case(hidden, steps, float64=True)


# ---- sm_90 (ahead of time, no GPU) -------------------------------------------------------

AOT_ATTENTION_DIMS = {"B": 2, "H": 4, "T": 256}
AOT_HIDDEN = 128


@pytest.fixture(scope="module")
def sm90(tmp_path_factory: pytest.TempPathFactory) -> dict[str, aot.KernelResources]:
    """attention at head dims 64 and 128, and the LSTM step at hidden 128: one batch."""
    tmp = tmp_path_factory.mktemp("sm90")
    jobs, names = [], []

    def add(tag: str, src: str, env: dict[str, int], kind: str) -> None:
        mod = emit_triton(compile_src(src, float64=False))
        path = tmp / f"{tag}.py"
        path.write_text(mod.source)
        (code,) = [c for c in mod.kernels if c.kernel.kind == kind]
        jobs.append(aot_job(code, path, env))
        names.append(tag)

    for D in (64, 128):
        add(f"attention_d{D}", attention_src(True), {**AOT_ATTENTION_DIMS, "D": D}, "attention")
    add("gates_h128", lstm_src(AOT_HIDDEN), {"B": 64, "T": 6}, "gates")
    return dict(zip(names, aot.compile_kernels(jobs)))


def _no_spills(r: aot.KernelResources) -> None:
    assert r.spills == 0, aot.check_resources(r)
    assert aot.check_resources(r) == []


@pytest.mark.parametrize("D", [64, 128])
def test_sm90_attention_fits_shared_memory(sm90: dict[str, aot.KernelResources],
                                           D: int) -> None:
    r = sm90[f"attention_d{D}"]
    assert 0 < r.shared_bytes <= aot.SHARED_LIMIT
    assert r.registers * aot.WARP_SIZE * r.num_warps <= aot.REGISTER_FILE


@pytest.mark.parametrize("D", [
    64, 128,
])
def test_sm90_attention_no_spills(sm90: dict[str, aot.KernelResources], D: int) -> None:
    _no_spills(sm90[f"attention_d{D}"])


def test_sm90_lstm_step_no_spills(sm90: dict[str, aot.KernelResources]) -> None:
    _no_spills(sm90["gates_h128"])


# ---- tanh --------------------------------------------------------------------------------

TANH = "model M { def forward(x: f32[N]) -> f32[N] { return tanh(x) } }"
TANH_POINTS = [-100, -45, -20, -1, -1e-3, 0, 1e-6, 0.1, 0.124, 0.126, 1, 20, 45, 100]


def test_tanh_within_one_ulp() -> None:
    x = np.array(TANH_POINTS, dtype=np.float32)
    got, _, _ = run_triton(TANH, False, {"x": x})
    y, want = got["forward"], np.tanh(x)
    assert y.dtype == np.float32 and not np.isnan(y).any()
    ulps = np.abs(y.astype(np.float64) - want) / np.spacing(np.abs(want)).astype(np.float64)
    assert (ulps <= 1).all(), dict(zip(TANH_POINTS, ulps))


def test_tanh_sweep_within_float32_tolerance() -> None:
    x = np.concatenate([np.linspace(-1, 1, 20001), np.linspace(-60, 60, 2001)]).astype(np.float32)
    got, want, _ = run_triton(TANH, False, {"x": x})
    assert_close(got["forward"], want["forward"], False)
    assert np.abs(got["forward"]).max() <= 1


# ---- reports --------------------------------------------------------------------------------

def compile_report(capsys: pytest.CaptureFixture[str], model: str, dims: str) -> dict:
    assert cli.main(["compile", str(MODELS / model), "--emit", "report", "--json",
                     "--dims", dims]) == 0
    return json.loads(capsys.readouterr().out)


def test_transformer_report_one_attention_kernel_per_block(
        capsys: pytest.CaptureFixture[str]) -> None:
    B, T, HEADS, DH = 2, 16, 4, 8
    rep = compile_report(capsys, "transformer.ember", f"B={B},T={T}")
    attention = [k for k in rep["launches"] if k["kind"] == "attention"]
    assert len(attention) == 2                          # LAYERS = 2
    for k in attention:
        assert k["ops"] == ["attention", "get"]
        assert "softmax(where(" in " ".join(k["source_lines"])
        # compulsory traffic: q, k, v and the output; no T x T scores
        assert k["bytes"] == 4 * (4 * B * HEADS * T * DH)
        assert k["launches"] == 1
    # the launcher allocates no [.., T, T] buffer anywhere
    g = api.compile_file(MODELS / "transformer.ember")
    mod = emit_triton(g)
    launcher = mod.source[mod.source.index("def launch("):]
    shapes = re.findall(r"pool\.empty\(\(([^)]*)\)", launcher)
    assert shapes and not [s for s in shapes if re.search(r"\bT, T,?$", s.strip())]
    assert [site.kernel.kind for site in mod.launches].count("attention") == 2
    # ... of one kernel, emitted once
    assert [c.kind for c in mod.kernels].count("attention") == 1


def test_lstm_report_step_kernel_runs_per_step(capsys: pytest.CaptureFixture[str]) -> None:
    T = 5
    rep = compile_report(capsys, "lstm.ember", f"B=2,T={T}")
    gates = [k for k in rep["kernels"] if k["kind"] == "gates"]
    assert len(gates) == 1 and gates[0]["launches"] == T
    assert {"matmul", "slice", "sigmoid", "tanh"} <= set(gates[0]["ops"])
    assert all(k["launches"] == 1 for k in rep["kernels"] if k["kind"] != "gates")
    assert rep["total"]["launches"] == T + len(rep["kernels"]) - 1


@pytest.mark.parametrize("model,inputs", [
    ("transformer", lambda rng: {"ids": rng.integers(0, 64, (2, 16)).astype(np.int32)}),
    ("lstm", lambda rng: {"x": rng.standard_normal((2, 5, 8)).astype(np.float32)}),
])
def test_model_files_on_triton(model: str, inputs) -> None:
    g = api.compile_file(MODELS / f"{model}.ember")
    params = api.init_params(g, seed=0)
    ins = inputs(np.random.default_rng(0))
    pool = GuardedPool()
    got = TritonProgram(g, cache=_CACHE)(ins, params, pool=pool)
    assert pool.check() == []
    want = api.run(g, ins, params)
    assert_close(got["forward"], want["forward"], False)
