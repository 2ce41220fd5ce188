"""Differential check of one generated model: every evaluator against the oracle.

The reference is the NumPy oracle in float64. Against it: the torch evaluator of
the IR (tests/torch_ir.py, float64) and, with `triton=True`, the generated kernels
in Triton's interpreter in float64. The float32 kernels, fused and unfused, are
compared with the oracle run on the float32 graph with the same (rounded) inputs,
so the comparison measures the kernels, not float32 itself.

Tolerances per dtype (|got - want| <= atol + rtol * |want|, elementwise), those of
`ember run --check` (ember/backends.py): float64 1e-10, float32 1e-4. NaNs match
NaNs and an infinity matches the same infinity.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from torch_ir import evaluate_torch

from ember import api
from ember.backends import tolerance
from ember.ir.graph import Graph
from ember.lang.emitter import Options
from ember.lang.parser import parse
from ember.runtime import oracle
from ember.runtime.inputs import draw_inputs
from ember.runtime.triton_backend import TritonProgram

from .gen import Program
from .harness import FILE, Outcome, Result

Arrays = Mapping[str, np.ndarray]


def check_model(prog: Program, triton: bool, seed: int = 0) -> Result:
    """Run `prog` through every evaluator; the first disagreement is a mismatch."""
    program = parse(prog.src, FILE)
    g64 = api.compile_program(program, options=Options(prog.train, True))
    params = api.init_params(g64, seed)
    inputs, env, _ = draw_inputs(g64, {}, prog.dims, seed)
    want = oracle.evaluate(g64, inputs, params, seed, env)
    runs = {"torch-f64": lambda: [t.detach().numpy()
                                  for t in evaluate_torch(g64, inputs, params, seed, env)]}
    if triton:
        runs["triton-f64"] = lambda: _triton(g64, inputs, params, seed, env, fused=True)
    for name, run in runs.items():
        bad = _first_mismatch(name, run(), want)
        if bad:
            return bad
    return _check_f32(program, prog, inputs, params, seed, env) if triton else \
        Result(Outcome.SUCCESS)


def _check_f32(program: Any, prog: Program, inputs: Arrays, params: Arrays, seed: int,
               env: dict[str, int]) -> Result:
    g32 = api.compile_program(program, options=Options(prog.train, False))
    in32, par32 = _as_f32(inputs), _as_f32(params)
    want = oracle.evaluate(g32, in32, par32, seed, env)
    for fused in (True, False):
        got = _triton(g32, in32, par32, seed, env, fused)
        bad = _first_mismatch(f"triton-f32-{'fused' if fused else 'unfused'}", got, want)
        if bad:
            return bad
    return Result(Outcome.SUCCESS)


def _triton(g: Graph, inputs: Arrays, params: Arrays, seed: int, env: dict[str, int],
            fused: bool) -> list[np.ndarray]:
    outs = TritonProgram(g, fused=fused)(inputs, params, seed, env)
    return [outs[name] for name in g.output_names]


def _as_f32(arrays: Arrays) -> dict[str, np.ndarray]:
    return {k: v.astype(np.float32) if v.dtype == np.float64 else v for k, v in arrays.items()}


def _first_mismatch(name: str, got: list[np.ndarray], want: list[np.ndarray]) -> Result | None:
    for k, (g, w) in enumerate(zip(got, want, strict=True)):
        why = differs(np.asarray(g), w)
        if why:
            return Result(Outcome.MISMATCH, f"mismatch {name}", f"{name} output {k}: {why}")
    return None


def differs(got: np.ndarray, want: np.ndarray) -> str:
    """Why `got` is not `want` within the tolerance of want's dtype, or ''."""
    if got.shape != want.shape or got.dtype != want.dtype:
        return f"{got.dtype}{list(got.shape)} vs {want.dtype}{list(want.shape)}"
    if not np.issubdtype(want.dtype, np.floating):
        bad = got != want
        return f"{int(bad.sum())} of {want.size} elements differ" if bad.any() else ""
    atol, rtol = tolerance(want.dtype, "ieee")
    same = (got == want) | (np.isnan(got) & np.isnan(want))
    with np.errstate(invalid="ignore"):
        close = np.abs(got - want) <= atol + rtol * np.abs(want)
    bad = ~(same | close)
    if not bad.any():
        return ""
    i = np.flatnonzero(bad)[0]
    return (f"{int(bad.sum())} of {want.size} elements off, first at flat index {i}: "
            f"{got.flat[i]!r} vs {want.flat[i]!r} (atol {atol:g}, rtol {rtol:g})")
