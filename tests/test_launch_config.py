"""Launch configurations: the launcher and the sm_90 check run one configuration
(constexprs, num_warps, num_stages) per kernel, the rule that picks it keeps
dots without tensor cores within their register budget, and the kernels it
picks compile for sm_90 without spills at awkward sizes (the slow sweep)."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

import pytest

from ember import api
from ember.codegen import aot, blocks
from ember.codegen.ix import dim_name
from ember.codegen.module import emit_triton
from ember.kernel_cmds import aot_job
from tests.util import MODEL_NAMES, MODELS, compile_src

DIMS = {"mlp": {"B": 8}, "lenet": {"B": 8}, "resnet": {"B": 8}, "lstm": {"B": 100, "T": 3},
        "transformer": {"B": 2, "T": 16}}
AWKWARD = (1, 3, 17, 33, 65, 67, 100, 127, 129, 257)


def launcher_calls(source: str, env: dict[str, int]) -> list[tuple[str, dict[str, Any]]]:
    """(kernel, keyword arguments) of every launch in the generated launcher, as
    its own lines compute them at these dims: the dim bindings and the
    configuration lines are executed, the launches only read."""
    launch = next(f for f in ast.parse(source).body
                  if isinstance(f, ast.FunctionDef) and f.name == "launch")
    scope: dict[str, Any] = {"blocks": blocks, "dims": {k: v for k, v in env.items()}}
    calls = []
    for node in _statements(launch.body):
        if isinstance(node, ast.Assign) and _binds_config_or_dim(node):
            exec(compile(ast.Module([node], []), "<launcher>", "exec"), scope)
        elif isinstance(node, ast.Expr) and isinstance(node.value, ast.Call) \
                and isinstance(node.value.func, ast.Subscript):
            kernel = ast.unparse(node.value.func.value)
            calls.append((kernel, {k.arg: eval(ast.unparse(k.value), scope)
                                   for k in node.value.keywords}))
    return calls


def _statements(body: list[ast.stmt]) -> list[ast.stmt]:
    """The statements in source order, loop bodies included."""
    out: list[ast.stmt] = []
    for node in body:
        out.append(node)
        out += _statements(node.body) if isinstance(node, ast.For) else []
    return out


def _binds_config_or_dim(node: ast.Assign) -> bool:
    text = ast.unparse(node.targets[0]).strip("()")
    return text.endswith("WARPS, STAGES") or ast.unparse(node.value).startswith("dims[")


@pytest.mark.parametrize("grad", [False, True], ids=["loss", "grad"])
@pytest.mark.parametrize("model", MODEL_NAMES)
def test_aot_job_compiles_what_the_launcher_launches(model: str, grad: bool,
                                                     tmp_path: Path) -> None:
    env = DIMS[model]
    mod = emit_triton(api.compile_file(MODELS / f"{model}.ember", "loss", dims=env, grad=grad))
    codes = {c.name: c for c in mod.kernels}
    calls = launcher_calls(mod.source, {dim_name(k): v for k, v in env.items()})
    assert len(calls) == len(mod.launches)
    for kernel, kwargs in calls:
        job = aot_job(codes[kernel], tmp_path / "k.py", env)
        launched = (
            {k: v for k, v in kwargs.items() if k not in ("num_warps", "num_stages")},
            kwargs["num_warps"], kwargs["num_stages"])
        assert launched == (job["constexprs"], job["num_warps"], job["num_stages"]), kernel


def test_launcher_passes_stages_to_every_launch() -> None:
    g = compile_src("model M { def forward(x: f32[B, 8]) -> f32[B, 8] { return exp(x) } }",
                    float64=False)
    (line,) = [x for x in emit_triton(g).source.splitlines() if "WARPS, STAGES =" in x]
    assert line.strip() == "BLOCK, WARPS, STAGES = blocks.pointwise(8 * B), 4, blocks.STAGES"


# ---- the rule -----------------------------------------------------------------------------

@pytest.mark.parametrize("itemsize", [4, 8])
def test_fma_dots_stay_within_their_register_budget(itemsize: int) -> None:
    budget = blocks.FMA_WORK * 4 // itemsize
    for m in AWKWARD:
        for n in AWKWARD:
            for k in AWKWARD:
                c = blocks.matmul(m, n, k, itemsize)
                work = c.block_m * c.block_n * c.block_k / (32 * c.num_warps)
                assert work <= budget, (m, n, k, c)
                assert min(c.block_m, c.block_n, c.block_k) >= 16


def test_big_problems_get_big_tensor_core_tiles() -> None:
    assert blocks.matmul(8192, 2304, 768, mma=True) == blocks.Config(128, 128, 32, 8, 8, 3)
    assert blocks.matmul(8192, 2304, 768, 2, mma=True) == blocks.Config(128, 128, 64, 8, 8, 3)
    # too few 128-row tiles to fill the SMs: 64 x 64, so more programs run
    assert blocks.matmul(512, 512, 512, mma=True) == blocks.Config(64, 64, 32, 8, 4, 3)
    # no tensor cores (ieee fp32): never past 64 x 64
    assert blocks.matmul(8192, 2304, 768).block_m == 64


@pytest.mark.parametrize("itemsize", [2, 4])
def test_pipelined_tiles_fit_shared_memory(itemsize: int) -> None:
    """The operand tiles of every stage fit (the sweep below compiles the
    fp32 ones; 16-bit tiles wait for the language's bf16)."""
    for size in (*AWKWARD, 4096, 50257):
        c = blocks.matmul(size, size, size, itemsize, mma=True)
        staged = c.num_stages * (c.block_m + c.block_n) * c.block_k * itemsize
        assert staged <= aot.SHARED_LIMIT, (size, c)


def test_gates_share_one_matmul_tile() -> None:
    for m in AWKWARD:
        for n in AWKWARD:
            one = blocks.matmul(m, 4 * n, 64)
            c = blocks.gates(m, n, 64, 4)
            assert c.block_m * c.block_n * 4 <= max(one.block_m * one.block_n, 16 * 64)
            assert (c.num_warps, c.block_k) == (one.num_warps, one.block_k)


# ---- sm_90 ------------------------------------------------------------------------------

RESIDUAL = "model M {{ param w: f32[{k}, {n}] = zeros\n" \
           "  def forward(a: f32[B, {n}], h: f32[B, {k}]) -> f32[B, {n}] {{ return a + h @ w }} }}"
DENSE = "model M {{ param w: f32[{k}, {n}] = zeros\n param b: f32[{n}] = zeros\n" \
        "  def forward(x: f32[B, {k}]) -> f32[B, {n}] {{ return tanh(x @ w + b) }} }}"
# (model, B, K, N, dot precision): the spilling shapes, then awkward sizes
SWEEP = [(RESIDUAL, 64, 32, 64, "ieee"), (RESIDUAL, 100, 100, 65, "ieee"),
         (DENSE, 67, 100, 65, "ieee"), (DENSE, 67, 32, 64, "ieee"),
         *[(RESIDUAL, b, k, n, "ieee") for b, k, n in
           [(1, 3, 17), (17, 33, 65), (127, 129, 257), (257, 67, 127), (33, 257, 3)]],
         *[(DENSE, b, k, n, "ieee") for b, k, n in
           [(3, 17, 33), (65, 127, 129), (129, 65, 100), (100, 1, 67)]],
         *[(DENSE, b, k, n, "tf32") for b, k, n in [(67, 100, 65), (2049, 257, 1025)]]]


def sweep_jobs(tmp_path: Path) -> tuple[list[dict[str, Any]], list[str]]:
    jobs, where = [], []
    for k, (src, b, kk, n, prec) in enumerate(SWEEP):
        text = src.format(k=kk, n=n)
        mod = emit_triton(compile_src(text, float64=False), precision=prec)
        path = tmp_path / f"sweep{k}.py"
        path.write_text(mod.source)
        jobs += [aot_job(c, path, {"B": b}) for c in mod.kernels]
        where += [f"B={b} K={kk} N={n} {prec}: {c.name}" for c in mod.kernels]
    for prec in ("ieee", "tf32"):   # the LSTM at B=100: its gates kernel spilled
        env = {"B": 100, "T": 3}
        mod = emit_triton(api.compile_file(MODELS / "lstm.ember", "loss", dims=env),
                          precision=prec)
        path = tmp_path / f"lstm_{prec}.py"
        path.write_text(mod.source)
        jobs += [aot_job(c, path, env) for c in mod.kernels if c.kind == "gates"]
        where += [f"lstm {prec}: {c.name}" for c in mod.kernels if c.kind == "gates"]
    return jobs, where


@pytest.mark.slow
def test_awkward_shapes_compile_for_sm90_without_spills(tmp_path: Path) -> None:
    """One batch: the issue's spilling shapes and awkward sizes, ieee and tf32,
    each at the configuration its launcher would use (~30 s on 2 cores cold)."""
    pytest.importorskip("triton")
    jobs, where = sweep_jobs(tmp_path)
    assert any(j["num_stages"] == 3 and j["num_warps"] == 8 for j in jobs)  # a 128 x 128 tile
    resources = aot.compile_kernels(jobs)
    problems = [f"{w}: {p}" for w, r in zip(where, resources) for p in aot.check_resources(r)]
    assert problems == []
