"""Forward+backward benchmark: Ember's generated kernels against torch.compile
on the same PyTorch twins, side by side in one run.

    python bench/bench_grad.py [--models mlp,lstm] [--dims B=8,T=16]

Per model, for one training step's loss and gradients (no optimizer):

- Ember (`--entry loss --grad`): kernel launches at --dims (a kernel inside a
  scan counts once per step) and distinct kernels, the bytes of saved
  activations (forward values the backward reads from memory,
  codegen/saved.py), and the compile time from .ember source to the generated
  module, gradient pass included (median of 5).
- torch.compile (inductor) of the twin's loss followed by backward(): the
  kernels its forward and backward code generate, the library calls they make
  (matmul, conv), the bytes of activations its compiled forward saves for the
  backward (parameters and inputs excluded, as for Ember), and its compile
  time (first call, tracing and code generation included, its caches off).

Launches are counted from the generated code, not timed, so the figures hold
without a GPU; on the CPU inductor calls library kernels for matmul and conv,
on a GPU it generates Triton for some of them.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))  # the PyTorch twins live with the tests

from bench import inductor_kernels, parse_dims  # noqa: E402 (bench/bench.py, beside this)
from ember import api  # noqa: E402
from ember.codegen.module import emit_triton  # noqa: E402
from ember.codegen.report import report  # noqa: E402
from ember.codegen.saved import saved_activations  # noqa: E402

MODELS = ("mlp", "lenet", "resnet", "lstm", "transformer")


def ember_figures(name: str, env: dict[str, int]) -> dict[str, Any]:
    path = ROOT / "models" / f"{name}.ember"
    times = []
    for _ in range(5):
        t0 = time.perf_counter()
        mod = emit_triton(api.compile_file(path, "loss", grad=True))
        times.append(time.perf_counter() - t0)
    total = report(mod, env)["total"]
    return {"launches": total["launches"], "distinct": total["kernels"],
            "saved": sum(saved_activations(mod.plan, env).values()),
            "compile_ms": 1000 * statistics.median(times)}


def torch_figures(name: str, env: dict[str, int]) -> dict[str, Any]:
    import torch
    from test_grad_models import NAMES, _ce
    from test_models_vs_torch import make_inputs, torch_model
    from torch._inductor.utils import run_and_get_code

    g = api.compile_file(ROOT / "models" / f"{name}.ember", "loss")
    model = torch_model(name, api.init_params(g, 0))
    inputs = make_inputs(name, np.random.default_rng(0), env["B"], env.get("T", 1), np.float32)
    x_name, y_name, _ = NAMES[name]
    x, y = torch.from_numpy(inputs[x_name]), torch.from_numpy(inputs[y_name])
    compiled = torch.compile(lambda a, b: _ce(model(a), b))
    known = {t.data_ptr() for t in [*model.parameters(), *model.buffers(), x, y]}
    saved: list[int] = []

    def step() -> None:
        def pack(t: Any) -> Any:
            if t.data_ptr() not in known:
                saved.append(t.numel() * t.element_size())
            return t
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            loss = compiled(x, y)
        loss.backward()

    t0 = time.perf_counter()
    _, codes = run_and_get_code(step)
    seconds = time.perf_counter() - t0
    kernels, extern = inductor_kernels("\n".join(codes))
    return {"kernels": kernels, "extern": extern, "saved": sum(saved), "compile_s": seconds}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--dims", default="B=8,T=16", type=parse_dims)
    args = ap.parse_args()
    # inductor's caches would make its compile time that of a cache hit
    os.environ.setdefault("TORCHINDUCTOR_FORCE_DISABLE_CACHES", "1")
    print(f"forward+backward, dims {args.dims}")
    print(f"{'model':<12} {'launches':>8} {'distinct':>8} {'saved B':>9} {'compile':>8} | "
          f"{'tc kern':>7} {'tc lib':>6} {'tc launch':>9} {'tc saved B':>10} {'tc comp':>8} "
          f"{'launch ratio':>12}")
    for name in args.models.split(","):
        e, t = ember_figures(name, args.dims), torch_figures(name, args.dims)
        tc_launches = t["kernels"] + t["extern"]
        print(f"{name:<12} {e['launches']:>8} {e['distinct']:>8} {e['saved']:>9} "
              f"{e['compile_ms']:>6.1f}ms | {t['kernels']:>7} {t['extern']:>6} "
              f"{tc_launches:>9} {t['saved']:>10} {t['compile_s']:>7.1f}s "
              f"{e['launches'] / tc_launches:>11.2f}x")


if __name__ == "__main__":
    main()
