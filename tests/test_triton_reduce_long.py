"""Long reductions through the generated Triton kernels against the NumPy oracle.

A row longer than 32 KiB (`blocks.reduce_looped`: more than 8192 f32 or 4096
f64 elements) is reduced by a *looped* kernel: passes over RBLOCK chunks with
running accumulators. These cases run that form in Triton's interpreter at
16385 (one past a power of two), other odd sizes and a GPT-2 vocabulary
(50257), for every reduction op, f32 and f64, and for the fused softmax,
layer_norm and cross_entropy kernels, which need several passes. Symbolic row
lengths leave the choice to the launcher (the LOOPED constexpr); one compiled
graph runs both branches. The looped kernels are also compiled for sm_90 at
the sizes the launcher would pick, and must not spill.

Tolerances: the kernel runs in the model's dtype and is compared with the
oracle in float64 on the same inputs, elementwise within REL[dtype] (f32 1e-5,
f64 1e-12) of the expected value plus REL[dtype] of the output's RMS: a sum
that cancels to near zero is judged against the size of its terms, a softmax
entry of 2e-5 against itself. Integer and index results must be equal. Rows
stay few, since the interpreter pays per program and per chunk.
"""

from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np
import pytest
from util import compile_src  # tests/util.py

pytest.importorskip("torch")
pytest.importorskip("triton")

from ember import api  # noqa: E402 - after the importorskips on purpose
from ember.codegen import aot, blocks  # noqa: E402
from ember.codegen.module import KernelCode, emit_triton  # noqa: E402
from ember.kernel_cmds import aot_job, launch_constants  # noqa: E402
from ember.runtime.pool import GuardedPool  # noqa: E402
from ember.runtime.triton_backend import TritonProgram  # noqa: E402

REL = {np.dtype(np.float32): 1e-5, np.dtype(np.float64): 1e-12}
VOCAB = 50257  # GPT-2


def model(expr: str, **inputs: str) -> str:
    args = ", ".join(f"{k}: {t}" for k, t in inputs.items())
    return f"model M {{\n  def forward({args}) {{ return {expr} }}\n}}"


def run(src: str, inputs: dict[str, np.ndarray], float64: bool, train: bool = False,
        looped: bool = True) -> None:
    """Triton (interpreter, guarded buffers) in the model's dtype against the
    float64 oracle on the same values; `looped`: some kernel has the looped form."""
    wide = {k: v.astype(np.float64) if v.dtype.kind == "f" else v for k, v in inputs.items()}
    want = api.run(compile_src(src, float64=True, train=train), wide, {}, 0)
    pool = GuardedPool()
    g = compile_src(src, float64=float64, train=train)
    assert ("for roff in range" in emit_triton(g).source) == looped
    got = TritonProgram(g, fused=True, precision="ieee")(inputs, {}, 0, pool=pool)
    assert pool.check() == []
    for name, w in want.items():
        g_out = got[name]
        if w.dtype.kind != "f":
            np.testing.assert_array_equal(g_out, w, err_msg=name)
            continue
        rel = REL[g_out.dtype]
        finite = w[np.isfinite(w)]
        rms = float(np.sqrt(np.mean(finite**2))) if finite.size else 0.0
        np.testing.assert_allclose(g_out, w, rtol=rel, atol=rel * rms, err_msg=name)


def rng_for(key: str) -> np.random.Generator:
    return np.random.default_rng(zlib.crc32(key.encode()))


def normal(key: str, *shape: int, dtype: type = np.float32) -> np.ndarray:
    return rng_for(key).standard_normal(shape).astype(dtype)


def ties(key: str, *shape: int, dtype: type = np.float32) -> np.ndarray:
    """Values in {0, 1, 2}: the maximum and minimum recur in every chunk."""
    return rng_for(key).integers(0, 3, shape).astype(dtype)


def nonfinite(n: int, dtype: type = np.float32) -> np.ndarray:
    """Rows that pin NaN and infinity handling across chunks: NaNs late in the
    row (the first wins), all NaN, all -inf, +inf twice, and a tie of the max
    in an early and a late chunk."""
    rows: np.ndarray = np.zeros((6, n), dtype)
    rows[0, :] = ties("nonfinite", n)
    rows[0, [n - 5, 9000]] = np.nan
    rows[1, :] = np.nan
    rows[2, :] = -np.inf
    rows[3, [3000, n - 1]] = np.inf
    rows[4, :] = -1.0
    rows[4, [n - 2, 7]] = 5.0
    rows[5, :] = ties("nonfinite 5", n)
    return rows


# ---- every reduction op -------------------------------------------------------------------

OPS = ("sum", "mean", "max", "min", "argmax")


@pytest.mark.parametrize("float64", [False, True], ids=["f32", "f64"])
@pytest.mark.parametrize("op", OPS)
def test_each_op_over_a_long_row(op: str, float64: bool) -> None:
    dtype = np.float64 if float64 else np.float32
    maker = ties if op in ("max", "min", "argmax") else normal
    x = maker(op, 3, 16385, dtype=dtype)
    run(model(f"{op}(x, axis=-1)", x="f32[3, 16385]"), {"x": x}, float64)


@pytest.mark.parametrize("float64", [False, True], ids=["f32", "f64"])
@pytest.mark.parametrize("op", ("max", "min", "argmax"))
def test_nan_and_infinity_across_chunks(op: str, float64: bool) -> None:
    x = nonfinite(16385, np.float64 if float64 else np.float32)
    run(model(f"{op}(x, axis=-1)", x="f32[6, 16385]"), {"x": x}, float64)


def test_argmax_of_an_all_nan_tile_is_index_0() -> None:
    # 2 rows of a column fill the persistent block exactly: no -inf padding lane
    x = np.full((2, 33), np.nan, np.float32)
    run(model("argmax(x, axis=0)", x="f32[2, 33]"), {"x": x}, False, looped=False)


@pytest.mark.parametrize("expr", ["sum(i, axis=-1)", "max(i, axis=-1)", "min(i, axis=-1)",
                                  "argmax(i, axis=-1)"])
def test_integer_rows(expr: str) -> None:
    i = rng_for(expr).integers(-9, 9, (2, 16385)).astype(np.int32)
    run(model(expr, i="i32[2, 16385]"), {"i": i}, False)


@pytest.mark.parametrize("expr", ["max(p, axis=-1)", "min(p, axis=-1)", "argmax(p, axis=-1)"])
def test_bool_rows(expr: str) -> None:
    """A bool takes a 32-bit register, so 16385 of them loop too."""
    p = np.zeros((3, 16385), bool)
    p[0, [12000, 16384]] = True
    p[2, :] = True
    run(model(expr, p="bool[3, 16385]"), {"p": p}, False)


# ---- layouts: strided rows, several reduced axes, symbolic lengths ------------------------

LAYOUTS = [  # (expression, input shape): each row is longer than a block
    ("sum(x, axis=0)", (20000, 3)),          # a bias gradient: few columns, many rows
    ("mean(x, axis=0)", (9001, 5)),
    ("max(x, axis=1)", (2, 9000, 3)),        # the reduced axis in the middle
    ("sum(x, axis=(1, 2))", (2, 129, 129)),  # two reduced axes, delinearized per chunk
    ("argmax(x, axis=0)", (9000, 2)),
    ("x - mean(x, axis=-1, keepdims=true)", (2, 16385)),
    ("sqrt(sum(x * x, axis=-1)) + 1.0", (2, 16385)),  # a per-row epilogue after the loop
    ("min(x, axis=0, keepdims=true)", (9000, 3)),
]


@pytest.mark.parametrize("float64", [False, True], ids=["f32", "f64"])
@pytest.mark.parametrize("expr,shape", LAYOUTS, ids=[f"{e} {list(s)}" for e, s in LAYOUTS])
def test_layouts(expr: str, shape: tuple[int, ...], float64: bool) -> None:
    maker = ties if "argmax" in expr else normal
    x = maker(expr, *shape, dtype=np.float64 if float64 else np.float32)
    dims = ", ".join(map(str, shape))
    run(model(expr, x=f"f32[{dims}]"), {"x": x}, float64)


def test_symbolic_length_runs_both_branches() -> None:
    """One graph, one generated kernel: N = 7 takes the persistent branch and
    N = 16385 the looped one (the launcher decides per launch)."""
    src = model("softmax(x), argmax(x, axis=-1), mean(x, axis=-1)", x="f32[B, N]")
    assert not blocks.reduce_looped(7) and blocks.reduce_looped(16385)
    for n in (7, 16385):
        run(src, {"x": ties(f"sym {n}", 2, n)}, False)


# ---- fused multi-reduction kernels -----------------------------------------------------

FUSED = [
    ("softmax(x)", (2, VOCAB)),
    ("log_softmax(x)", (2, 16385)),
    ("softmax(x), max(x, axis=-1)", (2, 16385)),  # a per-row and a full-shape output
    ("layer_norm(x, w, b)", (2, 16385)),
]


@pytest.mark.parametrize("float64", [False, True], ids=["f32", "f64"])
@pytest.mark.parametrize("expr,shape", FUSED, ids=[f"{e} {list(s)}" for e, s in FUSED])
def test_fused_kernels(expr: str, shape: tuple[int, int], float64: bool) -> None:
    dtype = np.float64 if float64 else np.float32
    rows, n = shape
    inputs = {"x": normal(expr, rows, n, dtype=dtype) * 3}
    types = {"x": f"f32[{rows}, {n}]"}
    if "layer_norm" in expr:
        inputs |= {"w": normal("w", n, dtype=dtype), "b": normal("b", n, dtype=dtype)}
        types |= {"w": f"f32[{n}]", "b": f"f32[{n}]"}
    run(model(expr, **types), inputs, float64)


@pytest.mark.parametrize("float64", [False, True], ids=["f32", "f64"])
def test_cross_entropy_over_a_gpt2_vocabulary(float64: bool) -> None:
    dtype = np.float64 if float64 else np.float32
    z = normal("ce", 3, VOCAB, dtype=dtype) * 4
    y = np.array([0, 31337, VOCAB - 1], np.int32)
    run(model("cross_entropy(z, y)", z=f"f32[3, {VOCAB}]", y="i32[3]"), {"z": z, "y": y},
        float64)


def test_batch_norm_statistics_over_many_pixels() -> None:
    """Training-mode statistics reduce 4 x 64 x 64 pixels per channel."""
    shapes = {"x": (4, 3, 64, 64), "w": (3,), "b": (3,), "m": (3,), "v": (3,)}
    inputs = {k: normal(k, *s) for k, s in shapes.items()}
    inputs["v"] = np.abs(inputs["v"]) + 0.5
    types = {k: f"f32[{', '.join(map(str, s))}]" for k, s in shapes.items()}
    run(model("batch_norm(x, w, b, m, v)", **types), inputs, False, train=True)


# ---- block sizes and sm_90 ---------------------------------------------------------------

def test_block_sizes() -> None:
    """Persistent up to 32 KiB a row, then chunks of 8 KiB; strided rows get
    short chunks of several rows; no tile exceeds 8192 elements."""
    assert [blocks.reduce_looped(n) for n in (8192, 8193)] == [False, True]
    assert [blocks.reduce_looped(n, itemsize=8) for n in (4096, 4097)] == [False, True]
    assert (blocks.reduce_rows(4, VOCAB), blocks.reduce_cols(VOCAB)) == (1, 2048)
    assert blocks.reduce_cols(VOCAB, itemsize=8) == 1024
    assert (blocks.reduce_rows(128, 10**6, inner=False),
            blocks.reduce_cols(10**6, inner=False)) == (16, 128)
    assert (blocks.reduce_rows(3, 10**6, inner=False), blocks.reduce_rows(64, 8192)) == (4, 1)
    for rows in (1, 3, 129, 10**6):
        for cols in (1, 7, 4096, 8192, 8193, VOCAB, 10**6):
            for inner in (True, False):
                x, r = blocks.reduce_rows(rows, cols, 4, inner), blocks.reduce_cols(cols, 4, inner)
                assert x * r <= 8192


AOT_CASES = [  # (expression, input types, dims): every kernel loops at these dims
    ("softmax(x)", {"x": f"f32[B, {VOCAB}]"}, {"B": 8}),
    ("cross_entropy(z, y)", {"z": f"f32[B, {VOCAB}]", "y": "i32[B]"}, {"B": 4096}),
    ("layer_norm(x, w, b)", {"x": "f32[B, N]", "w": "f32[N]", "b": "f32[N]"},
     {"B": 4, "N": 16385}),
    ("argmax(x, axis=-1), min(x, axis=-1)", {"x": "f32[B, N]"}, {"B": 4, "N": 20011}),
    ("sum(x, axis=0)", {"x": "f32[B, 128]"}, {"B": 10**6}),
]


def loops(code: KernelCode, dims: dict[str, int]) -> bool:
    """Does this kernel take the looped form at these dims?"""
    return "for roff" in code.source and launch_constants(code, dims).get("LOOPED", 1) == 1


@pytest.mark.slow
def test_looped_kernels_compile_for_sm90_without_spills(tmp_path: Path) -> None:
    """Each looped kernel, f32 and f64, is compiled with the constants the
    launcher computes at these dims (kernel_cmds.aot_job, as `--target sm_90`
    does), in one batch."""
    jobs = []
    for k, (expr, types, dims) in enumerate(AOT_CASES):
        for float64 in (False, True):
            path = tmp_path / f"m{k}_{'f64' if float64 else 'f32'}.py"
            mod = emit_triton(compile_src(model(expr, **types), float64=float64))
            path.write_text(mod.source)
            looped = [aot_job(c, path, dims) for c in mod.kernels if loops(c, dims)]
            assert looped, expr
            jobs += looped
    for r in aot.compile_kernels(jobs):
        assert r.spills == 0 and aot.check_resources(r) == [], r
