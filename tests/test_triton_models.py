"""The five models in models/ through the generated Triton kernels.

* Triton (interpreter, fused) vs the NumPy oracle in float32, for forward and
  loss in eval mode, plus train mode for mlp (dropout) and resnet (batch
  statistics), every kernel buffer from a `GuardedPool` whose canaries must
  survive; tolerance from `ember.backends.tolerance`.
* Fused vs unfused kernels: equal within that tolerance in float32, and
  bit-exact in float64 where every intermediate is a small integer (mlp and
  lenet forward with integer parameters and inputs: matmul, conv2d, add, relu
  and max-pool are exact there, and the order of summation cannot matter).
* Every kernel of every model compiled ahead of time for sm_90 in one batch at
  B=8, T=16: no register spills, shared memory within the H100 limit.
* What the fusion report (`ember compile --emit report --json`) promises:
  conv+bias+relu, conv+batch-norm, dense+bias+relu, softmax and layer_norm
  each in one kernel.
* The CLI: `ember run --backend triton --check` exits 0 on every model, and
  the comparison behind `--check` fails on outputs outside the tolerance.
"""

from __future__ import annotations

import contextlib
import io
import json
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from functools import cache
from pathlib import Path

import numpy as np
import pytest
from util import MODEL_NAMES, MODELS, ROOT, perturb  # tests/util.py

pytest.importorskip("torch")
pytest.importorskip("triton")

from ember import api, backends, cli  # noqa: E402 - after the importorskips on purpose
from ember.codegen import aot  # noqa: E402
from ember.codegen.module import emit_triton  # noqa: E402
from ember.ir.graph import Graph  # noqa: E402
from ember.kernel_cmds import aot_job  # noqa: E402
from ember.lang.emitter import Options  # noqa: E402
from ember.runtime.inputs import draw_inputs  # noqa: E402
from ember.runtime.pool import GuardedPool  # noqa: E402
from ember.runtime.triton_backend import TritonProgram  # noqa: E402

DIMS = {"B": 3, "T": 5}  # odd batch and sequence length: partial tiles everywhere
ENTRIES = ("forward", "loss")
# (model, entry, train): every model's entries in eval mode, plus train for mlp and resnet
CONFIGS = [(m, e, False) for m in MODEL_NAMES for e in ENTRIES] + [
    (m, e, True) for m in ("mlp", "resnet") for e in ENTRIES]


def config_id(model: str, entry: str, train: bool) -> str:
    return f"{model}.{entry}" + (" train" if train else "")


CONFIG_PARAMS = [pytest.param(*c, id=config_id(*c)) for c in CONFIGS]


@cache
def graph(model: str, entry: str, train: bool = False, float64: bool = False) -> Graph:
    return api.compile_file(MODELS / f"{model}.ember", entry,
                            options=Options(train=train, float64=float64))


def perturbed_params(g: Graph, seed: int) -> dict[str, np.ndarray]:
    return perturb(api.init_params(g, seed), seed)


def run_triton(g: Graph, inputs: dict[str, np.ndarray], params: dict[str, np.ndarray],
               env: dict[str, int], fused: bool = True, seed: int = 0) -> dict[str, np.ndarray]:
    """The generated kernels' outputs; every buffer's canaries must survive."""
    pool = GuardedPool()
    outs = TritonProgram(g, fused=fused, precision="ieee")(inputs, params, seed, env, pool=pool)
    assert pool.check() == []
    return outs


def assert_within_tolerance(got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> None:
    assert list(got) == list(want)
    for name, w in want.items():
        g = got[name]
        assert (g.shape, g.dtype) == (w.shape, w.dtype), name
        atol, rtol = backends.tolerance(w.dtype, "ieee")
        np.testing.assert_allclose(g, w, rtol=rtol, atol=atol, err_msg=name)


# ---- (a) Triton vs the oracle, float32 ---------------------------------------------------


@pytest.mark.parametrize("model, entry, train", CONFIG_PARAMS)
def test_triton_matches_oracle_f32(model: str, entry: str, train: bool) -> None:
    g = graph(model, entry, train)
    params = perturbed_params(g, seed=1)
    inputs, env, _ = draw_inputs(g, {}, DIMS, seed=2)
    want = api.run(g, inputs, params, seed=3, dims=env)
    got = run_triton(g, inputs, params, env, seed=3)
    assert_within_tolerance(got, want)
    checks = backends.compare(got, want, "ieee")  # what `ember run --check` decides
    assert all(r.ok for r in checks), [str(r) for r in checks]


@pytest.mark.parametrize("model", MODEL_NAMES)
def test_one_program_serves_every_batch_size(model: str) -> None:
    """The kernels take B and T as arguments: one TritonProgram, several sizes."""
    g = graph(model, "forward")
    program = TritonProgram(g, fused=True, precision="ieee")
    params = perturbed_params(g, seed=1)
    for seed, dims in enumerate(({"B": 2, "T": 3}, {"B": 5, "T": 7}, {"B": 17, "T": 2})):
        inputs, env, _ = draw_inputs(g, {}, dims, seed)
        pool = GuardedPool()
        got = program(inputs, params, seed, env, pool=pool)
        assert pool.check() == []
        assert_within_tolerance(got, api.run(g, inputs, params, seed, env))


@pytest.mark.parametrize("model", MODEL_NAMES)
@pytest.mark.parametrize("bind", ["run time", "compile time"])
def test_batch_of_one(model: str, bind: str) -> None:
    dims = {"B": 1, "T": 1}
    g = api.compile_file(MODELS / f"{model}.ember", "loss",
                         dims=dims if bind == "compile time" else None)
    params = perturbed_params(g, seed=1)
    inputs, env, _ = draw_inputs(g, {}, dims, seed=2)
    got = run_triton(g, inputs, params, env)
    assert_within_tolerance(got, api.run(g, inputs, params, dims=env))


# ---- (b) fused vs unfused ---------------------------------------------------------------


@pytest.mark.parametrize("model", MODEL_NAMES)
def test_fused_matches_unfused_f32(model: str) -> None:
    entry, train = ("loss", True) if model in ("mlp", "resnet") else ("forward", False)
    g = graph(model, entry, train)
    params = perturbed_params(g, seed=4)
    inputs, env, _ = draw_inputs(g, {}, DIMS, seed=5)
    fused = run_triton(g, inputs, params, env, fused=True, seed=6)
    unfused = run_triton(g, inputs, params, env, fused=False, seed=6)
    assert_within_tolerance(fused, unfused)


def integer_valued(g: Graph, dims: dict[str, int], seed: int
                   ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], dict[str, int]]:
    """float64 parameters in {-2..2} and inputs in {-3..3}."""
    rng = np.random.default_rng(seed)
    params = {k: rng.integers(-2, 3, v.shape).astype(np.float64)
              for k, v in api.init_params(g, 0).items()}
    inputs, env, _ = draw_inputs(g, {}, dims, seed)
    inputs = {k: rng.integers(-3, 4, v.shape).astype(v.dtype) for k, v in inputs.items()}
    return params, inputs, env


def test_fused_unfused_bit_exact_f64_on_integers() -> None:
    """Dense, conv, pool and ReLU only (batch norm's square root is not integer-exact):
    the VGG example, as models/ has no such model."""
    g = api.compile_file(ROOT / "examples" / "vgg.ember", "forward", options=Options(float64=True))
    params, inputs, env = integer_valued(g, DIMS, seed=8)
    fused = run_triton(g, inputs, params, env, fused=True)
    unfused = run_triton(g, inputs, params, env, fused=False)
    want = api.run(g, inputs, params, dims=env)
    (out,) = want.values()
    assert out.dtype == np.float64 and np.all(out == np.round(out))
    assert np.abs(out).max() > 100  # the values are large enough to notice a lost term
    for name in want:
        np.testing.assert_array_equal(fused[name], unfused[name], err_msg=name)
        np.testing.assert_array_equal(fused[name], want[name], err_msg=name)


# ---- (c) every kernel compiles for sm_90 without spills -------------------------------------

AOT_DIMS = {"B": 8, "T": 16}
# train-mode forward kernels are a subset of train-mode loss kernels (same dropout epilogues,
# same batch-statistics reductions), so train mode compiles the loss entry only
AOT_CONFIGS = [c for c in CONFIGS if not (c[2] and c[1] == "forward")]


def test_every_kernel_compiles_for_sm90(tmp_path: Path) -> None:
    """One batch (one worker process) for every distinct kernel of every configuration:
    84 kernels (108 launch sites), 20-50 s on 2 cores with a cold Triton cache,
    ~3 s warm."""
    jobs, where = [], []
    for model, entry, train in AOT_CONFIGS:
        g = api.compile_file(MODELS / f"{model}.ember", entry, options=Options(train=train),
                             dims=AOT_DIMS)
        mod = emit_triton(g, fused=True, precision="ieee", title=config_id(model, entry, train))
        path = tmp_path / f"{model}_{entry}_{'train' if train else 'eval'}.py"
        path.write_text(mod.source)
        for code in mod.kernels:
            jobs.append(aot_job(code, path, dict(AOT_DIMS)))  # as `ember compile --target`
            where.append(f"{config_id(model, entry, train)}: {code.name}")
    resources = aot.compile_kernels(jobs)
    assert len(resources) == len(jobs)
    problems = [f"{w}: {p}" for w, r in zip(where, resources) for p in aot.check_resources(r)]
    assert problems == []
    assert all(r.spills == 0 and r.shared_bytes <= aot.SHARED_LIMIT for r in resources)


# ---- (d) what the fusion report promises ---------------------------------------------------


@cache
def report_kernels(model: str) -> tuple[tuple[str, ...], ...]:
    """The ops of each kernel launch site of `ember compile MODEL --emit report --json
    --dims B=2,T=8` (repeated blocks launch one kernel from several sites)."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        rc = cli.main(["compile", str(MODELS / f"{model}.ember"), "--emit", "report", "--json",
                       "--dims", "B=2,T=8" if model in ("lstm", "transformer") else "B=2"])
    assert rc == 0
    return tuple(tuple(k["ops"]) for k in json.loads(out.getvalue())["launches"])


def contains(ops: tuple[str, ...], wanted: list[str]) -> bool:
    """Does the kernel's op list contain `wanted` as a multiset?"""
    have = Counter(ops)
    return all(have[op] >= n for op, n in Counter(wanted).items())


def test_report_lenet_conv_batch_norm_relu_in_one_kernel() -> None:
    convs = [ops for ops in report_kernels("lenet") if "conv2d" in ops]
    assert len(convs) == 4  # conv1 to conv4
    # eval-mode batch norm: (x - mean) * rsqrt(var + eps) * weight + bias, then relu
    fused = ["conv2d", "sub", "mul", "mul", "add", "relu"]
    assert all(contains(ops, fused) for ops in convs), convs


BATCH_NORM_OPS = {"sub", "mul", "add", "rsqrt", "sqrt", "div", "relu"}


def test_report_resnet_batch_norm_fused_into_its_conv() -> None:
    kernels = report_kernels("resnet")
    convs = [ops for ops in kernels if "conv2d" in ops]
    assert len(convs) == 6  # stem, 2 per basic block, 2 + projection in the down block
    # eval-mode batch norm: (x - mean) * rsqrt(var + eps) * weight + bias after its conv
    assert all(contains(ops, ["conv2d", "sub", "mul", "mul", "add"]) for ops in convs), convs
    alone = [ops for ops in kernels if set(ops) <= BATCH_NORM_OPS]
    assert alone == [], f"kernels of batch-norm ops alone: {alone}"


def test_report_mlp_dense_bias_relu_in_one_kernel() -> None:
    kernels = report_kernels("mlp")
    assert any(contains(ops, ["matmul", "add", "relu"]) for ops in kernels), kernels
    assert not any(set(ops) <= {"add", "relu"} for ops in kernels), kernels


SOFTMAX = ["max", "sub", "exp", "sum", "div"]
LAYER_NORM = ["mean", "sub", "mul", "mean", "add", "rsqrt", "mul", "add"]


def test_report_transformer_softmax_and_layer_norm_in_one_kernel() -> None:
    kernels = report_kernels("transformer")
    layers, norms_per_layer = 2, 2
    # the softmax is inside the attention op (passes/recognize.py), one kernel a layer
    softmax = [ops for ops in kernels if "attention" in ops]
    assert len(softmax) == layers and not [ops for ops in kernels if contains(ops, SOFTMAX)]
    norms = [ops for ops in kernels if {"mean", "rsqrt"} & set(ops)]
    assert not set(softmax) & set(norms)
    assert len(norms) == layers * norms_per_layer + 1  # + the final ln_f
    assert all(contains(ops, LAYER_NORM) for ops in norms), norms


# ---- (e) the CLI's --check --------------------------------------------------------------


@pytest.fixture(scope="module")
def cli_runs() -> Iterator[dict[str, subprocess.Popen[str]]]:
    """`ember run MODEL --backend triton --check` for every model, all started at once."""
    procs = {m: subprocess.Popen(
        [sys.executable, "-m", "ember", "run", str(MODELS / f"{m}.ember"), "--backend",
         "triton", "--check", "--dims", "B=2,T=5" if m in ("lstm", "transformer") else "B=2"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for m in MODEL_NAMES}
    yield procs
    for p in procs.values():
        if p.poll() is None:
            p.kill()
            p.wait()


@pytest.mark.parametrize("model", MODEL_NAMES)
def test_cli_run_triton_check_passes(model: str, cli_runs: dict[str, subprocess.Popen[str]]
                                     ) -> None:
    out, err = cli_runs[model].communicate(timeout=300)
    assert cli_runs[model].returncode == 0, err[-3000:]
    assert "backend: triton (requested)" in out
    checks = [line for line in out.splitlines() if line.startswith("check ")]
    assert checks and all(line.endswith(" ok") for line in checks), out


def test_compare_flags_outputs_outside_tolerance() -> None:
    rng = np.random.default_rng(0)
    want = {"y": rng.standard_normal((3, 7)).astype(np.float32),
            "z": rng.standard_normal(5)}
    atol32, rtol32 = backends.tolerance(np.dtype(np.float32), "ieee")
    inside = {"y": want["y"] + np.float32(0.5 * atol32), "z": want["z"] * (1 + 1e-12)}
    assert [r.ok for r in backends.compare(inside, want, "ieee")] == [True, True]

    y = want["y"].copy()
    y[2, 6] += 10 * (atol32 + rtol32 * abs(y[2, 6]))
    z = want["z"].copy()
    z[0] += 1e-8  # far inside float32's bound, far outside float64's 1e-10
    results = backends.compare({"y": y, "z": z}, want, "ieee")
    assert [r.ok for r in results] == [False, False]
    assert "FAILED" in str(results[0]) and results[0].max_abs > atol32
    # tf32 dots get a looser bound that absorbs the same float32 error
    assert backends.compare({"y": y}, {"y": want["y"]}, "tf32")[0].ok

    wrong_shape = backends.compare({"y": want["y"][:2]}, {"y": want["y"]}, "ieee")
    wrong_dtype = backends.compare({"y": want["y"].astype(np.float64)}, {"y": want["y"]}, "ieee")
    nan = np.full(3, np.nan)
    assert [wrong_shape[0].ok, wrong_dtype[0].ok] == [False, False]
    assert backends.compare({"n": nan}, {"n": nan}, "ieee")[0].ok  # NaN where the oracle has NaN
    assert not backends.compare({"n": np.zeros(3)}, {"n": nan}, "ieee")[0].ok


def test_check_exits_1_when_outputs_disagree(monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    real_run = backends.run

    def off_by_one(*args, **kwargs):  # the backend's outputs, each nudged by 1
        return {k: v + v.dtype.type(1) for k, v in real_run(*args, **kwargs).items()}

    path = str(MODELS / "mlp.ember")
    assert cli.main(["run", path, "--backend", "numpy", "--check", "--dims", "B=2"]) == 0
    monkeypatch.setattr(backends, "run", off_by_one)
    assert cli.main(["run", path, "--backend", "numpy", "--check", "--dims", "B=2"]) == 1
    assert "check forward: max abs err 1" in capsys.readouterr().out
