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

Mixed precision (`--precision bf16-mixed|f16-mixed`) has two references:
- "same", the oracle of the same mixed graph (what `--check` runs), compared
  elementwise: bf16 2e-2, f16 5e-3. Both sides round the same operands, so
  they differ only where f32 sums in another order move a value across a
  16-bit rounding boundary before a later product: one ulp of bf16 is 7.8e-3
  relative (f16: 9.8e-4), and the bounds allow 2.5 (bf16) and 5 (f16) of them.
  Measured on every model, forward, loss and gradients, at B=3, T=5: at most
  8.9e-4 (bf16, the GPT's gradients) and 3.5e-4 (f16, LeNet's).
- "f64", the model's own float64 oracle, compared normwise, ||got - want||_2
  <= atol * sqrt(n) + rtol * ||want||_2: bf16 5e-2, f16 2e-3. This is the
  rounding error of the 16-bit operands themselves (unit roundoff 2^-9 for
  bf16, 2^-12 for f16, growing with K), plus the gradients a rounding sends
  elsewhere when it flips a max-pool's or a relu's choice: elementwise such
  a gradient can be off by its own size, so only a norm bounds it. Measured:
  at most 1.5e-2 (bf16) and 3.7e-4 (f16), both on LeNet's gradients.

The dot precision default stays ieee for f32 models. tf32 would be torch's
choice for convolutions (allow_tf32 is on for cuDNN, off for matmuls since
torch 1.12), but its 2e-2 tolerance would make `--check` of every f32 model
20 times looser; a user who wants tensor cores asks for them explicitly, with
--dot-precision tf32 or --precision bf16-mixed, and sees the tolerance change.
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
    ("f16-mixed", "same"): 5e-3, ("f16-mixed", "f64"): 2e-3,
}


def tolerance(dtype: np.dtype, dot_precision: str, precision: str = "f32",
              reference: str = "same") -> tuple[float, float]:
    """(atol, rtol) for outputs of this dtype under these precisions."""
    if precision in ("bf16-mixed", "f16-mixed"):
        key = (precision, reference)
    elif dtype == np.float64:
        key = ("f64", "same")
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
    """One Comparison per output; against the "f64" reference (a mixed-precision
    run beside the float64 model) the error is normwise and dtypes may differ."""
    out = []
    for name, w in want.items():
        g = got[name]
        atol, rtol = tolerance(w.dtype, dot_precision, precision, reference)
        if g.shape != w.shape or (g.dtype != w.dtype and reference == "same"):
            out.append(Comparison(name, float("inf"), float("inf"), atol, rtol, False))
            continue
        gf, wf = g.astype(np.float64), w.astype(np.float64)
        err, ok = _errors(gf, wf, atol, rtol)
        if reference == "f64":
            ok = _normwise(err, wf, atol, rtol)
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


def _normwise(err: np.ndarray, want: np.ndarray, atol: float, rtol: float) -> bool:
    """||err||_2 <= atol * sqrt(n) + rtol * ||want||_2 (an infinite error fails)."""
    scale = float(np.linalg.norm(np.where(np.isfinite(want), want, 0.0)))
    return bool(np.linalg.norm(err) <= atol * np.sqrt(err.size) + rtol * scale)


def _max(a: np.ndarray) -> float:
    """The largest error; NaN if some value is NaN on one side only."""
    return float(a.max()) if a.size else 0.0
