"""Backward of the windowed ops through the generated Triton kernels.

conv2d's input gradient is a conv2d over a PAD view of dy (interior padding =
the stride) and a FLIP view of the weight; its weight gradient a conv2d whose
channels are the batch N and whose K loop runs over N*OH*OW; avg-pool's
gradient a depthwise conv2d with a constant kernel; max-pool's the
MAX_POOL2D_GRAD kernel (pool_grad: dy routed to each window's first maximum,
NaN counting as the maximum; overlapping windows sum). Each case differentiates
`sum(op(x, ...) * r)` (r random, so dy is not constant) with respect to the
weight and x, and runs the joint graph in Triton's interpreter against the
NumPy oracle on the same graph and inputs, with B bound at compile time and
left symbolic. Buffers come from a GuardedPool (no store past a buffer).

Tolerances (ember.backends.tolerance, ieee dots): float32 1e-4 absolute and
relative, float64 1e-10. Max-pool gradients are exact sums of dy values, so a
tie or NaN routed to the wrong tap fails by a whole dy. The file also compiles
every backward kernel of every model for sm_90 (no spills, shared memory within
the H100 limit) in one batch, at the dims of the issue's acceptance commands.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from util import MODEL_NAMES, MODELS  # tests/util.py

pytest.importorskip("torch")
pytest.importorskip("triton")

from ember import api  # noqa: E402 - after the importorskips on purpose
from ember.backends import tolerance  # noqa: E402
from ember.codegen import aot  # noqa: E402
from ember.codegen.module import KernelCode, emit_triton  # noqa: E402
from ember.ir.graph import Graph  # noqa: E402
from ember.ir.shapes import window_out  # noqa: E402
from ember.kernel_cmds import aot_job, launch_constants  # noqa: E402
from ember.lang.emitter import Options  # noqa: E402
from ember.lang.parser import parse  # noqa: E402
from ember.passes.fuse import fuse  # noqa: E402
from ember.runtime.pool import GuardedPool  # noqa: E402
from ember.runtime.triton_backend import TritonProgram  # noqa: E402


@dataclass(frozen=True)
class Case:
    """`call` applied to x: f32[B, C, H, W] (and the parameter w, when w_shape
    is given), differentiated as sum(call * r)."""

    call: str
    x: tuple[int, int, int, int]
    out: tuple[int, int]                 # the result's spatial dims
    c_out: int
    w_shape: tuple[int, ...] = ()
    f64: bool = False
    bind: bool = True                    # B bound at compile time, else symbolic
    values: str = "normal"               # normal | ties | nan


def conv(x: tuple[int, int, int, int], w: tuple[int, int, int, int], stride: int = 1,
         padding: int = 0, dilation: int = 1, groups: int = 1, **kw: object) -> Case:
    args = f"stride={stride}, padding={padding}, dilation={dilation}, groups={groups}"
    out = tuple(window_out(x[a], w[a], stride, padding, dilation) for a in (2, 3))
    return Case(f"conv2d(x, w, {args})", x, out, w[0], w, **kw)  # type: ignore[arg-type]


def pool(op: str, x: tuple[int, int, int, int], k: int | tuple[int, int], stride: int,
         padding: int = 0, pre: str = "x", **kw: object) -> Case:
    kh, kw_ = (k, k) if isinstance(k, int) else k
    out = (window_out(x[2], kh, stride, padding), window_out(x[3], kw_, stride, padding))
    call = f"{op}({pre}, {k}, stride={stride}, padding={padding})"
    return Case(call, x, out, x[1], **kw)  # type: ignore[arg-type]


CONV_CASES = [
    conv((2, 3, 7, 7), (4, 3, 3, 3), f64=True),
    conv((2, 3, 7, 6), (4, 3, 3, 3), stride=2, padding=1, bind=False),
    conv((3, 2, 9, 8), (4, 2, 3, 2), stride=2, padding=2, dilation=2),
    conv((1, 4, 9, 7), (4, 2, 3, 3), padding=2, dilation=2, groups=2, bind=False),
    conv((2, 3, 6, 5), (3, 1, 3, 3), stride=2, padding=1, groups=3, f64=True, bind=False),
    conv((2, 2, 1, 5), (3, 2, 1, 3), padding=0, bind=False),
    conv((2, 2, 3, 3), (5, 2, 3, 3)),                             # a 1x1 output
    conv((2, 3, 6, 6), (4, 3, 1, 1), stride=2, bind=False),
    conv((3, 4, 5, 5), (6, 2, 2, 2), stride=2, padding=1, groups=2),
]

POOL_CASES = [
    pool(op, x, k, s, p, values=v, bind=b)
    for op in ("max_pool2d", "avg_pool2d")
    for x, k, s, p, v, b in [
        ((2, 3, 6, 6), 2, 2, 0, "normal", True),
        ((2, 2, 7, 5), 3, 2, 1, "normal", False),           # overlapping windows
        ((1, 2, 7, 6), 3, 1, 1, "ties", True),              # 9 windows per input, ties
        ((2, 2, 5, 7), 2, 1, 0, "ties", False),
        ((1, 3, 1, 5), (1, 3), 2, 0, "normal", True),       # a size-1 spatial dim
        ((1, 1, 3, 3), 3, 1, 0, "normal", False),           # one window
    ]
] + [
    pool("max_pool2d", (2, 2, 6, 5), 3, 2, 1, values="nan", bind=False),
    pool("max_pool2d", (2, 3, 6, 6), 2, 2, 0, pre="relu(x)", f64=True),  # RELU_MASK
]
RELU_MASK = POOL_CASES[-1]


def source(case: Case) -> str:
    B = "B"
    param = f"  param w: f32[{', '.join(map(str, case.w_shape))}] = he_normal\n" \
        if case.w_shape else ""
    _, C, H, W = case.x
    OH, OW = case.out
    return (f"model M {{\n{param}"
            f"  def loss(x: f32[{B}, {C}, {H}, {W}], r: f32[{B}, {case.c_out}, {OH}, {OW}])"
            f" -> f32[] {{\n    return sum({case.call} * r)\n  }}\n}}\n")


def inputs(case: Case) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    rng = np.random.default_rng(zlib.crc32(repr(case).encode()))
    dtype = np.float64 if case.f64 else np.float32
    x = rng.standard_normal(case.x)
    if case.values == "ties":
        x = rng.integers(0, 3, case.x).astype(np.float64)
    if case.values == "nan":
        x[rng.random(case.x) < 0.15] = np.nan
    r = rng.standard_normal((case.x[0], case.c_out, *case.out))
    params = {"w": rng.standard_normal(case.w_shape).astype(dtype)} if case.w_shape else {}
    return {"x": x.astype(dtype), "r": r.astype(dtype)}, params


def joint_graph(case: Case) -> Graph:
    """The loss and its gradients for w and x."""
    dims = {"B": case.x[0]} if case.bind else None
    return api.compile_program(parse(source(case), "case.ember"), "loss",
                               options=Options(False, case.f64), dims=dims, grad=True,
                               grad_inputs=["x"])


def check(case: Case) -> None:
    src = source(case)
    g = joint_graph(case)
    ins, params = inputs(case)
    want = api.run(g, ins, params, 0)
    pool_ = GuardedPool()
    got = TritonProgram(g, fused=True, precision="ieee")(ins, params, 0, pool=pool_)
    assert pool_.check() == []
    for name, w in want.items():
        atol, rtol = tolerance(w.dtype, "ieee")
        np.testing.assert_allclose(got[name], w, atol=atol, rtol=rtol, equal_nan=True,
                                   err_msg=f"{name} of {src}")


@pytest.mark.parametrize("case", CONV_CASES, ids=lambda c: f"{c.call}{list(c.x)}")
def test_conv2d_backward_matches_oracle(case: Case) -> None:
    check(case)


@pytest.mark.parametrize("case", POOL_CASES,
                         ids=lambda c: f"{c.call}{list(c.x)}-{c.values}-bind{c.bind}")
def test_pool_backward_matches_oracle(case: Case) -> None:
    check(case)


def test_relu_mask_is_an_epilogue_of_the_pool_grad_kernel() -> None:
    """dx of relu(x) -> max_pool2d: one kernel routes dy and applies the mask."""
    g = joint_graph(RELU_MASK)
    (kern,) = [k for k in fuse(g).kernels if k.kind == "pool_grad"]
    assert sorted(g.nodes[i].op.value for i in kern.nodes) == ["max_pool2d_grad", "where"]


# ---- every backward kernel of every model compiles for sm_90 --------------------------------

# the dims of issue 7's acceptance commands (`ember compile --grad --target sm_90`)
AOT_DIMS = {"mlp": {"B": 8}, "lenet": {"B": 8}, "resnet": {"B": 8}, "lstm": {"B": 4, "T": 6},
            "transformer": {"B": 2, "T": 16}}


def kernel_key(code: KernelCode, env: dict[str, int]) -> tuple[object, ...]:
    """What a compile depends on: the code, its arguments and launch constants."""
    return ("\n".join(code.body), tuple(code.params),
            tuple(sorted(launch_constants(code, env).items())), code.launch.num_warps)


@pytest.mark.slow
def test_every_backward_kernel_compiles_for_sm90(tmp_path: Path) -> None:
    """One batch for the distinct kernels of each model's joint forward+backward
    graph that its forward loss graph lacks (test_triton_models compiles those):
    about 100 kernels, 20-60 s on 2 cores with a cold Triton cache, ~10 s warm."""
    jobs, where, seen = [], [], set()
    for model in MODEL_NAMES:
        env = AOT_DIMS[model]
        path = MODELS / f"{model}.ember"
        forward = emit_triton(api.compile_file(path, "loss", dims=env))
        joint = emit_triton(api.compile_file(path, "loss", dims=env, grad=True))
        seen |= {kernel_key(c, env) for c in forward.kernels}
        source = tmp_path / f"{model}_grad.py"
        source.write_text(joint.source)
        for code in joint.kernels:
            if kernel_key(code, env) not in seen:
                seen.add(kernel_key(code, env))
                jobs.append(aot_job(code, source, env))  # as `ember compile --target`
                where.append(f"{model}: {code.name}")
    assert len(jobs) > 50 and any("max_pool2d_grad" in w for w in where)
    resources = aot.compile_kernels(jobs)
    problems = [f"{w}: {p}" for w, r in zip(where, resources) for p in aot.check_resources(r)]
    assert problems == []
    assert all(r.spills == 0 and r.shared_bytes <= aot.SHARED_LIMIT for r in resources)
