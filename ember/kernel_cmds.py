"""`ember compile` stages past the IR: kernels, Triton source, reports, sm_90.

    --emit kernels         distinct kernels, the sites launching each (ops, DSL
                           lines), unfused pairs
    --emit triton [-o DIR] the generated module (kernels + launcher)
    --emit report [--json] bytes and flops per distinct kernel at --dims, and
                           launches and launch sites apart
    --target sm_90         compile each distinct kernel once ahead of time; add
                           registers, spills and shared memory; fail on spills
                           or > 227 KiB
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import Any

from ember.codegen import aot, blocks
from ember.codegen.ix import dim_name
from ember.codegen.module import KernelCode, Module, emit_triton
from ember.codegen.report import describe, report
from ember.codegen.saved import saved_activations
from ember.ir.graph import Graph
from ember.ir.loc import DSLError
from ember.runtime.files import write_atomic
from ember.runtime.inputs import require_dims


def compile_kernels(g: Graph, args: argparse.Namespace) -> int:
    mod = emit_triton(g, fused=not args.no_fuse, precision=args.dot_precision,
                      title=f"{Path(args.model).name} {args.entry}")
    if args.emit == "kernels":
        print(describe(mod))
    elif args.emit == "triton":
        _emit_source(mod, args, g)
    if args.target:
        require_dims(g, f"compiling for {args.target}")
    resources = _aot(mod, args.dims) if args.target else None
    if args.emit == "report":
        rep = report(mod, args.dims)
        if any(name.startswith("grad.") for name in g.output_names):
            saved = saved_activations(mod.plan, args.dims)
            rep["total"]["saved_activation_bytes"] = sum(saved.values())
            rep["saved_activations"] = saved
        if resources:
            for k, r in zip(rep["kernels"], resources):
                k.update(registers=r.registers, spills=r.spills, shared_bytes=r.shared_bytes,
                         tensor_cores=r.tensor_cores, artifacts=r.artifacts)
        print(json.dumps(rep, indent=2) if args.json else _table(rep))
    elif resources and args.emit not in ("kernels", "triton"):
        print(_resource_table(mod, resources))
    return _verdict(resources)


def _emit_source(mod: Module, args: argparse.Namespace, g: Graph) -> None:
    if not args.output:
        print(mod.source)
        return
    out = Path(args.output)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DSLError(f"cannot write kernels to '{out}': {e.strerror or e}") from None
    path = out / f"{Path(args.model).stem}_{args.entry}.py"
    write_atomic(path, lambda f: f.write(mod.source.encode()), "kernels to")
    print(f"wrote {len(mod.kernels)} distinct kernels ({len(mod.launches)} launch sites) "
          f"and the launcher to {path}")


def launch_config(code: KernelCode, env: dict[str, int]) -> tuple[dict[str, int], int, int]:
    """(constexprs, num_warps, num_stages) the launcher passes at these dims:
    the value of the very expression it unpacks (Launch.values)."""
    *consts, warps, stages = _launch_values(code.launch.values(), env)
    return dict(zip(code.launch.constexprs, consts)), warps, stages


def launch_constants(code: KernelCode, env: dict[str, int]) -> dict[str, int]:
    """The block sizes the launcher would pick at these dims."""
    return launch_config(code, env)[0]


def _launch_values(expr: str, env: dict[str, int]) -> list[int]:
    """Evaluate a launcher expression (our own generated text) at these dims."""
    try:
        scope = {dim_name(k): v for k, v in env.items()}
        return [int(v) for v in eval(expr, {"blocks": blocks, **scope})]
    except NameError as e:
        raise DSLError(f"compiling for a GPU needs every dimension bound: {e}; pass --dims") \
            from None


def aot_job(code: KernelCode, path: Path, env: dict[str, int]) -> dict[str, Any]:
    """The ahead-of-time compile job for one kernel of a module written to `path`,
    with the launch configuration the launcher would use at these dims."""
    consts, warps, stages = launch_config(code, env)
    return {"path": str(path), "fn_name": code.name, "signature": code.signature(),
            "constexprs": consts, "num_warps": warps, "num_stages": stages}


def _aot(mod: Module, env: dict[str, int]) -> list[aot.KernelResources]:
    with tempfile.TemporaryDirectory(prefix="ember-sm90-") as tmp:
        path = Path(tmp) / "kernels.py"
        path.write_text(mod.source)
        jobs = [aot_job(c, path, env) for c in mod.kernels]
        try:
            return aot.compile_kernels(jobs)
        except aot.AOTError as e:
            raise DSLError(f"kernel {e.kernel} does not compile for sm_90: {e.message}") from None


def _verdict(resources: list[aot.KernelResources] | None) -> int:
    problems = [f"{r.name}: {p}" for r in resources or [] for p in aot.check_resources(r)]
    for p in problems:
        print(f"error: {p}")
    return 1 if problems else 0


def _table(rep: dict[str, Any]) -> str:
    sm90 = bool(rep["kernels"]) and "registers" in rep["kernels"][0]
    extra = f" {'regs':>5} {'spills':>7} {'shared':>8}" if sm90 else ""
    lines = [f"{'kernel':<34} {'sites':>5} {'launches':>8} {'bytes':>12} {'flops':>12} "
             f"{'est us':>8} {'bound':>7}{extra}"]
    for k in rep["kernels"]:
        more = (f" {k['registers']:>5} {k['spills']:>7} {k['shared_bytes']:>8}" if sm90 else "")
        lines.append(f"{k['name']:<34} {k['sites']:>5} {k['launches']:>8} {k['bytes']:>12} "
                     f"{k['flops']:>12} {k['est_us']:>8.2f} {k['bound']:>7}{more}")
    t = rep["total"]
    lines.append(f"{'total':<34} {t['launch_sites']:>5} {t['launches']:>8} {t['bytes']:>12} "
                 f"{t['flops']:>12} {t['est_us']:>8.2f}")
    lines.append(f"est us: a roofline floor on an {t['target']} (max of bytes over bandwidth and "
                 f"flops over the kernel's peak, all launches); bound: which term is larger")
    if "saved_activation_bytes" in t:
        lines.append(f"saved activations (forward values the backward reads): "
                     f"{t['saved_activation_bytes']} bytes in {len(rep['saved_activations'])} "
                     f"tensors")
    if "optimizer" in rep:
        o = rep["optimizer"]
        lines.append(f"optimizer update: {o['tensors']} parameters in {o['launches']} "
                     f"launch{'es' if o['launches'] != 1 else ''} ({', '.join(o['kernels'])})")
    lines.append(f"{t['launches']} launches of {t['kernels']} distinct kernels from "
                 f"{t['launch_sites']} sites (bytes, flops: per launch; total: all launches)")
    return "\n".join(lines)


def _resource_table(mod: Module, resources: list[aot.KernelResources]) -> str:
    """Per kernel: registers, spills, shared memory, warps, whether its PTX uses
    tensor cores, and where Triton's cache keeps its artifacts (PTX included)."""
    lines = [f"{'kernel (sm_90)':<34} {'regs':>5} {'spills':>7} {'shared':>8} {'warps':>5} "
             f"{'mma':>4}  artifacts"]
    for r in resources:
        lines.append(f"{r.name:<34} {r.registers:>5} {r.spills:>7} {r.shared_bytes:>8} "
                     f"{r.num_warps:>5} {'yes' if r.tensor_cores else 'no':>4}  {r.artifacts}")
    return "\n".join(lines)
