"""The compiled training step on the Triton side: the multi-tensor (foreach)
kernels, the launch count of the optimizer, the step through the interpreter
against the oracle, and every step kernel compiled for sm_90.

Tolerances: float32 through the interpreter against the float32 oracle,
backends.tolerance (1e-4 relative and absolute): kernels sum in another order.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from test_models_vs_torch import make_inputs
from test_triton_grad_windows import AOT_DIMS, kernel_key
from util import MODEL_NAMES, MODELS, ROOT

from ember import api, backends
from ember.codegen import aot
from ember.codegen.module import emit_triton
from ember.codegen.report import report
from ember.ir.dtypes import DType
from ember.ir.graph import Builder, TensorType
from ember.ir.ops import Op
from ember.ir.shapes import ShapeError, shape_rules
from ember.kernel_cmds import aot_job
from ember.lang.parser import parse
from ember.passes.optim import OptimizerConfig, update_region
from ember.runtime import oracle

pytest.importorskip("triton")

CONFIGS = {"adamw_clip": OptimizerConfig("adamw", weight_decay=0.01, clip=0.5),
           "sgd_nesterov": OptimizerConfig("sgd", momentum=0.9, nesterov=True,
                                           weight_decay=1e-4)}


def _step(model: str, config: OptimizerConfig, **kw):
    return api.compile_train_step(api.parse_file(MODELS / f"{model}.ember"), config, **kw)


# ---- the foreach op's meaning ------------------------------------------------------------

def _foreach_graph(shapes: list[tuple[int, ...]], reduce: bool):
    """foreach(a_k, b_k; s) -> a_k * s + b_k per group (or its sum over everything)."""
    b = Builder("f")
    xs = [b.add(Op.INPUT, (), {"name": f"{c}{k}", "shape": s, "dtype": DType.F64})
          for k, s in enumerate(shapes) for c in "ab"]
    s = b.add(Op.INPUT, (), {"name": "s", "shape": (), "dtype": DType.F64})
    rb = Builder("axpy")
    a, bb, sc = (rb.add(Op.INPUT, (), {"name": n, "shape": (), "dtype": DType.F64})
                 for n in ("a", "b", "s"))
    body = rb.build((a, bb, sc), (rb.add(Op.ADD, (rb.add(Op.MUL, (a, sc)), bb)),))
    node = b.add(Op.FOREACH, (*xs, s), {"body": body, "groups": len(shapes), "arity": 2,
                                        "reduce": reduce})
    r = 1 if reduce else len(shapes)
    gets = tuple(b.add(Op.GET, (node,), {"index": k}) for k in range(r))
    return b.build((*xs, s), gets)


@pytest.mark.parametrize("reduce", [False, True])
def test_foreach_oracle_is_the_region_per_group(reduce: bool) -> None:
    shapes = [(3, 4), (5,), (1, 2, 3)]
    g = _foreach_graph(shapes, reduce)
    rng = np.random.default_rng(0)
    inputs = {f"{c}{k}": rng.standard_normal(s) for k, s in enumerate(shapes) for c in "ab"}
    inputs["s"] = np.array(1.5)
    outs = oracle.evaluate(g, inputs, {})
    want = [inputs[f"a{k}"] * 1.5 + inputs[f"b{k}"] for k in range(len(shapes))]
    if reduce:
        want = [sum(float(w.sum()) for w in want)]
    for got, w in zip(outs, want):
        np.testing.assert_allclose(got, w, rtol=1e-14)


def test_foreach_group_of_mixed_shapes_is_ill_typed() -> None:
    rb = Builder("r")
    x = rb.add(Op.INPUT, (), {"name": "x", "shape": (), "dtype": DType.F32})
    body = rb.build((x, x), (x,))
    types = [TensorType((3,), DType.F32), TensorType((4,), DType.F32)]
    with pytest.raises(ShapeError, match="mixes shapes"):
        shape_rules[Op.FOREACH](types, {"body": body, "groups": 1, "arity": 2})


def test_update_region_is_one_scalar_function() -> None:
    body = update_region(CONFIGS["adamw_clip"], DType.F32, 4)
    names = [body.nodes[i].attrs["name"] for i in body.inputs]
    assert names == ["param", "grad", "exp_avg", "exp_avg_sq", "lr", "step_size",
                     "bias_correction2_sqrt", "clip_coef"]
    assert body.output_names == ("param", "exp_avg", "exp_avg_sq")


# ---- launches ------------------------------------------------------------------------------

def _report(g, env):
    return report(emit_triton(g), env)


def _dense_stack(n: int) -> str:
    return f"""
layer Dense(n_in: int, n_out: int) {{
  param w: f32[n_in, n_out] = he_normal
  param b: f32[n_out] = zeros
  def forward(x: f32[B, n_in]) -> f32[B, n_out] {{ return x @ w + b }}
}}
model Stack {{
  layer blocks: Dense(8, 8)[{n}]
  def loss(x: f32[B, 8], y: i32[B]) -> f32[] {{
    for blk in blocks {{ x = relu(blk(x)) }}
    return cross_entropy(x, y)
  }}
}}
"""


@pytest.mark.parametrize("depth", [2, 12])
def test_optimizer_update_is_two_launches_whatever_the_parameter_count(depth: int) -> None:
    g = api.compile_train_step(parse(_dense_stack(depth), "stack.ember"), CONFIGS["adamw_clip"])
    rep = _report(g, {"B": 4})
    assert rep["optimizer"]["launches"] == 2
    assert rep["optimizer"]["tensors"] == 2 * depth
    foreach = [k for k in rep["kernels"] if k["kind"] == "foreach"]
    assert len(foreach) == 2 and all(k["launches"] == 1 for k in foreach)


def test_frozen_parameters_launch_fewer_kernels() -> None:
    env = {"B": 4}
    full = _report(_step("lenet", CONFIGS["adamw_clip"]), env)
    frozen = _report(_step("lenet", CONFIGS["adamw_clip"],
                           frozen=("conv1.w", "conv1.bn.weight", "conv1.bn.bias", "conv2.w")), env)
    assert frozen["total"]["launches"] < full["total"]["launches"]
    assert frozen["optimizer"]["tensors"] == full["optimizer"]["tensors"] - 4


def test_cli_report_names_the_update_kernels() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "ember", "compile", "models/lenet.ember", "--entry", "loss",
         "--train-step", "adamw", "--emit", "report", "--dims", "B=4"],
        cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "optimizer update: 16 parameters in 2 launches" in proc.stdout


# ---- through the interpreter ----------------------------------------------------------------

@pytest.mark.parametrize("model", MODEL_NAMES)
def test_step_through_triton_matches_the_oracle(model: str) -> None:
    # batch norm over a batch of 2 leaves its input weights gradients near zero,
    # which Adam's normalization would turn into full-size steps of rounding noise
    config = CONFIGS["sgd_nesterov" if model in ("resnet", "mlp") else "adamw_clip"]
    g = _step(model, config)
    program = api.parse_file(MODELS / f"{model}.ember")
    state = api.init_train_state(g, api.init_model_params(program, seed=1))
    rng = np.random.default_rng(2)
    for step in (1, 2):
        batch = make_inputs(model, rng, 2, 3, np.float32)
        inputs = {**batch, **api.step_scalars(config, 1e-2, step)}
        got = backends.run("triton", g, inputs, state, step, {})
        want = backends.run("numpy", g, inputs, state, step, {})
        bad = [str(c) for c in backends.compare(got, want, "ieee") if not c.ok]
        assert not bad, (model, step, bad)
        moved = [k for k in want if k.startswith("new.") and
                 not np.array_equal(want[k], state[k.removeprefix("new.")])]
        assert len(moved) > len(want) // 2
        state.update({k.removeprefix("new."): v for k, v in want.items()
                      if k.startswith("new.")})


# ---- sm_90 -------------------------------------------------------------------------------

@pytest.mark.slow
def test_every_step_kernel_compiles_for_sm90(tmp_path: Path) -> None:
    """The kernels of each model's step (two optimizers) that its backward
    graph lacks (test_triton_grad_windows compiles those): the norm and update
    kernels, and the training-mode forward's (batch norm's running statistics)."""
    jobs, where = [], []
    for model in MODEL_NAMES:
        env = AOT_DIMS[model]
        path = MODELS / f"{model}.ember"
        joint = emit_triton(api.compile_file(path, "loss", dims=env, grad=True))
        seen = {kernel_key(c, env) for c in joint.kernels}
        for name, config in CONFIGS.items():
            mod = emit_triton(api.compile_train_step(api.parse_file(path), config, dims=env))
            source = tmp_path / f"{model}_{name}.py"
            source.write_text(mod.source)
            for code in mod.kernels:
                if kernel_key(code, env) not in seen:
                    seen.add(kernel_key(code, env))
                    jobs.append(aot_job(code, source, env))
                    where.append(f"{model} {name}: {code.name}")
    assert sum("foreach" in w for w in where) == 4 * len(MODEL_NAMES)
    resources = aot.compile_kernels(jobs)
    problems = [f"{w}: {p}" for w, r in zip(where, resources) for p in aot.check_resources(r)]
    assert problems == []


# ---- donation -----------------------------------------------------------------------------

def test_update_is_stored_over_donated_tensors_and_never_over_arrays() -> None:
    import torch

    from ember.runtime.triton_backend import TritonProgram
    config = CONFIGS["adamw_clip"]
    g = _step("mlp", config)
    program = api.parse_file(MODELS / "mlp.ember")
    state = api.init_train_state(g, api.init_model_params(program, seed=1))
    batch = {**make_inputs("mlp", np.random.default_rng(0), 2, 0, np.float32),
             **api.step_scalars(config, 1e-2, 1)}
    run = TritonProgram(g)
    before = {k: v.copy() for k, v in state.items()}
    outs = run(batch, state, 0, {})
    assert all(np.array_equal(state[k], before[k]) for k in state)   # arrays: untouched
    tensors = {k: torch.from_numpy(v.copy()) for k, v in state.items()}
    donated = run({k: torch.from_numpy(v) for k, v in batch.items()}, tensors, 0, {})
    for name in ("hidden.w", "optim.hidden.w.exp_avg", "out.b"):   # tensors: updated in place
        assert donated[f"new.{name}"].data_ptr() == tensors[name].data_ptr()
        np.testing.assert_array_equal(donated[f"new.{name}"].numpy(), outs[f"new.{name}"])


def test_a_parameter_read_after_the_update_is_not_overwritten() -> None:
    b = Builder("late")
    p = b.add(Op.PARAM, (), {"name": "p", "shape": (3, 5), "dtype": DType.F32,
                             "init": ("zeros",)})
    gr = b.add(Op.INPUT, (), {"name": "g", "shape": (3, 5), "dtype": DType.F32})
    rb = Builder("sub")
    x, y = (rb.add(Op.INPUT, (), {"name": n, "shape": (), "dtype": DType.F32}) for n in "xy")
    body = rb.build((x, y), (rb.add(Op.SUB, (x, y)),))
    node = b.add(Op.FOREACH, (p, gr), {"body": body, "groups": 1, "arity": 2,
                                       "donate": ((0, 0),)})
    new = b.add(Op.GET, (node,), {"index": 0})
    late = b.add(Op.MUL, (p, p))   # reads p after the update is launched
    g = b.build((gr,), (new, late), ("new", "late"))
    rng = np.random.default_rng(0)
    params = {"p": rng.standard_normal((3, 5)).astype(np.float32)}
    inputs = {"g": rng.standard_normal((3, 5)).astype(np.float32)}
    got = backends.run("triton", g, inputs, params, 0, {})
    np.testing.assert_array_equal(got["late"], params["p"] * params["p"])
    np.testing.assert_array_equal(got["new"], params["p"] - inputs["g"])
    assert "= p\n" not in emit_triton(g).source
