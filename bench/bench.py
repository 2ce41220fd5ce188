"""Ember's benchmark: fused versus unfused kernels, compile time, and (on a GPU)
run time against PyTorch eager and torch.compile on the same model and weights.

    python bench/bench.py [--models mlp,lstm] [--dims B=8,T=16] [--torch-compile]

Per model it prints the number of kernel launches and the global-memory bytes
they move (each buffer a kernel touches counted once, at --dims), fused and
unfused, the bytes of intermediate buffers, and Ember's compile time (DSL
source to generated module). --torch-compile also compiles the PyTorch
reference model with torch.compile and counts the kernels in its generated
code (C++ kernels on a CPU, Triton kernels on a GPU) and the bytes of the
intermediate buffers it allocates. With a CUDA GPU, run times come from
triton.testing.do_bench, all measured side by side in this one run.
"""

from __future__ import annotations

import argparse
import math
import re
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))  # the PyTorch reference models live with the tests

from ember import api  # noqa: E402
from ember.codegen.module import Module, emit_triton  # noqa: E402
from ember.codegen.report import report  # noqa: E402
from ember.ir import dims as dimlib  # noqa: E402
from ember.runtime.inputs import draw_inputs  # noqa: E402

MODELS = ("mlp", "lenet", "resnet", "lstm", "transformer")


def compile_time(path: Path, repeats: int = 5) -> float:
    """Median seconds from .ember source to a generated Triton module."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        emit_triton(api.compile_file(path, "forward"))
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def intermediate_bytes(mod: Module, env: dict[str, int]) -> int:
    """Bytes of buffers the launcher allocates that are not model outputs."""
    out = 0
    for site in mod.launches:
        g = site.plan.graph
        for o in site.kernel.outputs:
            if o not in g.outputs or site.plan is not mod.plan:
                t = g.nodes[o].tensor
                out += math.prod(dimlib.bind_shape(t.shape, env)) * t.dtype.itemsize
        for _, shape, dtype in site.extras.values():
            out += math.prod(dimlib.bind_shape(shape, env)) * dtype.itemsize
    return out


def ember_figures(name: str, env: dict[str, int]) -> dict[str, Any]:
    path = ROOT / "models" / f"{name}.ember"
    g = api.compile_file(path, "forward")
    fused, unfused = emit_triton(g), emit_triton(g, fused=False)
    rf, ru = report(fused, env)["total"], report(unfused, env)["total"]
    return {"graph": g, "fused": fused, "kernels": rf["launches"], "bytes": rf["bytes"],
            "kernels_unfused": ru["launches"], "bytes_unfused": ru["bytes"],
            "intermediate": intermediate_bytes(fused, env),
            "compile_ms": 1000 * compile_time(path)}


def torch_compile_figures(name: str, g: Any, env: dict[str, int]) -> dict[str, Any]:
    """Kernel count and intermediate bytes of torch.compile's generated code."""
    import torch
    from test_models_vs_torch import make_inputs, torch_model
    from torch._inductor.utils import run_and_get_code

    params = api.init_params(g, 0)
    model = torch_model(name, params).eval()
    inputs = make_inputs(name, np.random.default_rng(0), env["B"], env.get("T", 1),
                         np.float32)
    args = [torch.from_numpy(v) for k, v in inputs.items() if k in g.input_names()]
    compiled = torch.compile(model.forward)
    t0 = time.perf_counter()
    _, codes = run_and_get_code(compiled, *args)
    seconds = time.perf_counter() - t0
    code = "\n".join(codes)
    kernels, extern = inductor_kernels(code)
    return {"tc_kernels": kernels, "tc_extern": extern,
            "tc_intermediate": _allocated_bytes(code), "tc_compile_s": seconds}


def inductor_kernels(code: str) -> tuple[int, int]:
    """(generated kernels, library calls) in inductor's generated code."""
    kernels = len(re.findall(r"^def (?:cpp_fused|triton_)\w*", code, re.M)) + len(
        re.findall(r"cpp_fused_\w+ = async_compile\.cpp", code))
    return kernels, len(re.findall(r"extern_kernels\.\w+\(", code))


def _allocated_bytes(code: str) -> int:
    sizes = {"float32": 4, "float64": 8, "int64": 8, "int32": 4, "bool": 1}
    total = 0
    for shape, dtype in re.findall(r"empty_strided_\w+\(\(([^)]*)\),\s*\([^)]*\),\s*torch\.(\w+)",
                                   code):
        numel = math.prod(int(d) for d in shape.split(",") if d.strip())
        total += numel * sizes.get(dtype, 4)
    return total


def gpu_times(name: str, g: Any, env: dict[str, int]) -> dict[str, float]:
    """Median milliseconds: Ember's kernels, PyTorch eager, torch.compile."""
    import torch
    import triton.testing
    from test_models_vs_torch import make_inputs, torch_model

    from ember.runtime.pool import Pool
    from ember.runtime.triton_backend import TritonProgram

    params = api.init_params(g, 0)
    raw = make_inputs(name, np.random.default_rng(0), env["B"], env.get("T", 1), np.float32)
    inputs = {k: v for k, v in raw.items() if k in g.input_names()}
    prog = TritonProgram(g, precision="tf32")
    t_in = {k: torch.from_numpy(v).cuda() for k, v in inputs.items()}
    t_par = {k: torch.from_numpy(v).cuda() for k, v in params.items()}
    full_env = dict(env)
    _, bound, _ = draw_inputs(g, inputs, env, 0)
    full_env.update(bound)
    pool = Pool("cuda")
    model = torch_model(name, params).cuda().eval()
    args = list(t_in.values())
    compiled = torch.compile(model.forward)
    q = [0.5, 0.2, 0.8]
    with torch.no_grad():
        ember_ms = triton.testing.do_bench(
            lambda: prog.py.launch(t_in, t_par, full_env, 0, pool), quantiles=q)[0]
        eager_ms = triton.testing.do_bench(lambda: model(*args), quantiles=q)[0]
        compiled(*args)
        compiled_ms = triton.testing.do_bench(lambda: compiled(*args), quantiles=q)[0]
    return {"ember_ms": ember_ms, "eager_ms": eager_ms, "compiled_ms": compiled_ms}


def parse_dims(text: str) -> dict[str, int]:
    return {k: int(v) for k, v in (p.split("=") for p in text.split(",") if p)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--dims", default="B=8,T=16", type=parse_dims)
    ap.add_argument("--torch-compile", action="store_true")
    args = ap.parse_args()
    import torch
    gpu = torch.cuda.is_available()
    print(f"machine: {torch.cuda.get_device_name() if gpu else 'CPU only'}; dims {args.dims}")
    head = (f"{'model':<12} {'kernels':>7} {'unfused':>7} {'bytes':>10} {'unfused':>10} "
            f"{'interm.':>9} {'compile':>8}")
    print(head)
    rows = []
    for name in args.models.split(","):
        f = ember_figures(name, args.dims)
        print(f"{name:<12} {f['kernels']:>7} {f['kernels_unfused']:>7} {f['bytes']:>10} "
              f"{f['bytes_unfused']:>10} {f['intermediate']:>9} {f['compile_ms']:>6.1f}ms")
        rows.append((name, f))
    if args.torch_compile:
        print(f"\n{'model':<12} {'tc kernels':>10} {'tc extern':>9} {'tc interm.':>10} "
              f"{'tc compile':>10}")
        for name, f in rows:
            t = torch_compile_figures(name, f["graph"], args.dims)
            print(f"{name:<12} {t['tc_kernels']:>10} {t['tc_extern']:>9} "
                  f"{t['tc_intermediate']:>10} {t['tc_compile_s']:>9.1f}s")
    if gpu:
        print(f"\n{'model':<12} {'ember ms':>9} {'eager ms':>9} {'compile ms':>10} "
              f"{'vs eager':>8} {'vs compile':>10}")
        for name, f in rows:
            t = gpu_times(name, f["graph"], args.dims)
            print(f"{name:<12} {t['ember_ms']:>9.3f} {t['eager_ms']:>9.3f} "
                  f"{t['compiled_ms']:>10.3f} {t['eager_ms'] / t['ember_ms']:>7.2f}x "
                  f"{t['compiled_ms'] / t['ember_ms']:>9.2f}x")


if __name__ == "__main__":
    main()
