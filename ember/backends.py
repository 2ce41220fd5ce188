"""Backend choice, and `--check`: compare a backend's outputs with the oracle.

Tolerances are per dtype and dot precision, compared as |got - want| <=
atol + rtol * |want| elementwise; equal values (equal infinities included) and
NaN on both sides match, and a finite value never matches an infinite one:
- float64: 1e-10. Kernels sum in a different order than NumPy; in float64
  that moves results by a few ulp (~1e-15), far inside the bound.
- float32 with ieee or tf32x3 dots: 1e-4. fp32 accumulation in another order
  gives errors ~1e-6 * sqrt(K) (3.7e-5 at K = 1024 in our measurements).
- float32 with tf32 dots: 2e-2. TF32 keeps 10 mantissa bits per operand
  (relative error ~1e-3 each, growing with K).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np

from ember.ir.graph import Graph
from ember.runtime import oracle

BACKENDS = ("auto", "numpy", "triton")
DOT_PRECISIONS = ("ieee", "tf32", "tf32x3")


# atol = rtol by (--precision, what the output is compared with): "same" is the
# oracle of the same compiled graph, "f64" the oracle of the model in float64;
# for f32 the second key is the dot precision instead. The reasons are in the
# module docstring.
TOLERANCES: dict[tuple[str, str], float] = {
    ("f64", "same"): 1e-10,
    ("f32", "ieee"): 1e-4, ("f32", "tf32x3"): 1e-4, ("f32", "tf32"): 2e-2,
    ("bf16-mixed", "same"): 2e-2, ("bf16-mixed", "f64"): 5e-2,
    ("f16-mixed", "same"): 5e-3, ("f16-mixed", "f64"): 1e-2,
}


def tolerance(dtype: np.dtype, dot_precision: str, precision: str = "f32",
              reference: str = "same") -> tuple[float, float]:
    """(atol, rtol) for outputs of this dtype under these precisions."""
    if dtype == np.float64:
        key = ("f64", "same")
    elif precision in ("bf16-mixed", "f16-mixed"):
        key = (precision, reference)
    else:
        key = ("f32", dot_precision)
    return TOLERANCES[key], TOLERANCES[key]


def choose(requested: str) -> tuple[str, str]:
    """The backend to use and a sentence saying why."""
    if requested != "auto":
        return requested, f"{requested} (requested)"
    from ember.runtime.triton_backend import has_gpu
    if has_gpu():
        return "triton", "triton (auto: a CUDA GPU is present)"
    return "numpy", "numpy (auto: no CUDA GPU, so the NumPy oracle)"


Arrays = dict[str, np.ndarray]
Runner = Callable[[Mapping[str, np.ndarray], Mapping[str, np.ndarray], int,
                   Mapping[str, int]], Arrays]


def runner(backend: str, g: Graph, precision: str = "ieee", fused: bool = True) -> Runner:
    """g compiled once for a backend, as a function (inputs, params, seed, env)
    -> outputs by name (a training loop calls it every step)."""
    if backend == "numpy":
        def run_oracle(inputs: Mapping[str, np.ndarray], params: Mapping[str, np.ndarray],
                       seed: int, env: Mapping[str, int]) -> Arrays:
            outs = oracle.evaluate(g, dict(inputs), dict(params), seed, dict(env))
            return dict(zip(g.output_names, outs))
        return run_oracle
    from ember.runtime.triton_backend import TritonProgram
    program = TritonProgram(g, fused=fused, precision=precision)

    def run_kernels(inputs: Mapping[str, np.ndarray], params: Mapping[str, np.ndarray],
                    seed: int, env: Mapping[str, int]) -> Arrays:
        # Triton's interpreter computes masked-off lanes too (log(0) on the zeros a
        # masked load returns); those lanes are never stored, so their warnings are noise
        with np.errstate(all="ignore"):
            return program(inputs, params, seed, env)
    return run_kernels


def run(backend: str, g: Graph, inputs: Mapping[str, np.ndarray],
        params: Mapping[str, np.ndarray], seed: int, env: Mapping[str, int],
        precision: str = "ieee", fused: bool = True) -> Arrays:
    return runner(backend, g, precision, fused)(inputs, params, seed, env)


@dataclass(frozen=True)
class Comparison:
    name: str
    max_abs: float
    max_rel: float
    atol: float
    rtol: float
    ok: bool

    def __str__(self) -> str:
        verdict = "ok" if self.ok else "FAILED"
        return (f"check {self.name}: max abs err {self.max_abs:.3g}, max rel err "
                f"{self.max_rel:.3g} (tolerance atol {self.atol:g}, rtol {self.rtol:g}) {verdict}")


def compare(got: Mapping[str, np.ndarray], want: Mapping[str, np.ndarray],
            dot_precision: str, precision: str = "f32", reference: str = "same"
            ) -> list[Comparison]:
    """One Comparison per output."""
    out = []
    for name, w in want.items():
        g = got[name]
        atol, rtol = tolerance(w.dtype, dot_precision, precision, reference)
        if g.shape != w.shape or g.dtype != w.dtype:
            out.append(Comparison(name, float("inf"), float("inf"), atol, rtol, False))
            continue
        gf, wf = g.astype(np.float64), w.astype(np.float64)
        err, ok = _errors(gf, wf, atol, rtol)
        scale = np.maximum(np.abs(wf), np.finfo(np.float64).tiny)
        # against an infinite or NaN reference the relative error is the absolute one
        rel = np.divide(err, scale, out=err.copy(), where=np.isfinite(scale))
        out.append(Comparison(name, _max(err), _max(rel), atol, rtol, ok))
    return out


def _errors(got: np.ndarray, want: np.ndarray, atol: float, rtol: float
            ) -> tuple[np.ndarray, bool]:
    """|got - want| elementwise (0 where both agree exactly, equal infinities
    included, and where both are NaN), and whether every element is within
    tolerance. A finite value never matches an infinite one, whichever side."""
    same = (got == want) | (np.isnan(got) & np.isnan(want))
    with np.errstate(invalid="ignore"):  # inf - inf, masked by `same`
        err = np.where(same, 0.0, np.abs(got - want))
    within = np.isfinite(err) & (err <= atol + rtol * np.abs(want))
    return err, bool(np.all(same | within))


def _max(a: np.ndarray) -> float:
    """The largest error; NaN if some value is NaN on one side only."""
    return float(a.max()) if a.size else 0.0
