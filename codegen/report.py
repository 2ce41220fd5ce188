"""What the generated kernels do, for people and for machines.

`describe` is `--emit kernels`: each kernel with its IR ops and DSL lines, then
every producer/consumer pair the fusion pass kept apart, with its reason.
`report` is `--emit report --json`: per kernel the ops, source lines, global
memory bytes (each buffer a kernel reads or writes counted once: compulsory
traffic at the given dims) and flops, plus totals. Kernels inside a loop body
run once per step; `launches` says how many times.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from ember.ir import dims
from ember.ir.graph import Graph
from ember.ir.loc import DSLError
from ember.ir.ops import ATTENTION_OPS, ELEMENTWISE, REDUCE, Op
from ember.passes.fuse import Plan

from .module import KernelCode, Module


def describe(mod: Module) -> str:
    lines = []
    for code in mod.kernels:
        g = code.plan.graph
        ops = " ".join(f"%{i}:{g.nodes[i].op.value}" for i in sorted(code.kernel.nodes))
        lines.append(f"{code.name} [{code.kernel.kind}] {ops}")
        lines.append(f"    {_schedule(mod, code)}")
        for loc in source_lines(code):
            lines.append(f"    {loc}")
    unfused = _unfused(mod.plan)
    if unfused:
        lines.append("")
        lines.append("not fused:")
        lines += [f"    {u}" for u in unfused]
    return "\n".join(lines)


def _schedule(mod: Module, code: KernelCode) -> str:
    """Where and how the kernel runs: its grid, its tiles, and the loop it is in."""
    grid = " x ".join(code.launch.grid)
    tiles = ", ".join(f"{k}={v}" for k, v in code.launch.constexprs.items())
    where = "".join(f"; once per step of loop %{n} (range({length}))"
                    for n, length in _enclosing_loops(mod.plan, code.plan) or [])
    return f"grid {grid}; {tiles}{where}"


def _enclosing_loops(plan: Plan, target: Plan) -> list[tuple[int, dims.Dim]] | None:
    """The loops (node, length) from plan down to the body plan `target`,
    outermost first; None when target is not inside plan."""
    if plan is target:
        return []
    for node, body in plan.loops.items():
        inner = _enclosing_loops(body, target)
        if inner is not None:
            return [(node, plan.graph.nodes[node].attrs["length"]), *inner]
    return None


def _unfused(plan: Plan, where: str = "") -> list[str]:
    g = plan.graph
    out = [f"%{p} {g.nodes[p].op.value} -> %{c} {g.nodes[c].op.value}{where}: {why}"
           for p, c, why in plan.unfused]
    for node, body in plan.loops.items():
        out += _unfused(body, f" (in loop %{node})")
    return out


def source_lines(code: KernelCode) -> list[str]:
    g = code.plan.graph
    locs = sorted({(n.loc.file, n.loc.line, n.loc.source_line.strip())
                   for n in (g.nodes[i] for i in code.kernel.nodes) if n.loc.line})
    return [f"{f}:{line}: {text}" for f, line, text in locs]


def report(mod: Module, env: Mapping[str, int]) -> dict[str, Any]:
    kernels = [_kernel_report(code, env, _launches(mod, code, env)) for code in mod.kernels]
    total = {"kernels": len(kernels),
             "launches": sum(k["launches"] for k in kernels),
             "bytes": sum(k["bytes"] * k["launches"] for k in kernels),
             "flops": sum(k["flops"] * k["launches"] for k in kernels)}
    return {"kernels": kernels, "total": total}


def _launches(mod: Module, code: KernelCode, env: Mapping[str, int]) -> int:
    """How many times the launcher runs this kernel (loop bodies run per step)."""
    loops = _enclosing_loops(mod.plan, code.plan) or []
    return math.prod(_bind(length, env) for _, length in loops)


def _bind(d: dims.Dim, env: Mapping[str, int]) -> int:
    try:
        return dims.bind(d, env)
    except KeyError as e:
        raise DSLError(f"the report needs a value for dimension {e.args[0]}: pass --dims "
                       f"{e.args[0]}=N") from None


def _numel(g: Graph, i: int, env: Mapping[str, int]) -> int:
    return math.prod(_bind(d, env) for d in g.nodes[i].tensor.shape)


def _kernel_report(code: KernelCode, env: Mapping[str, int], launches: int) -> dict[str, Any]:
    g = code.plan.graph
    moved = sum(_numel(g, i, env) * g.nodes[i].tensor.dtype.itemsize
                for i in set(code.pointers.values()))
    moved += sum(math.prod(_bind(d, env) for d in shape) * dtype.itemsize
                 for _, shape, dtype in code.extras.values())
    return {"name": code.name, "kind": code.kernel.kind,
            "ops": [g.nodes[i].op.value for i in sorted(code.kernel.nodes)],
            "source_lines": source_lines(code), "bytes": moved,
            "flops": sum(_flops(g, i, env) for i in code.kernel.nodes), "launches": launches}


def _flops(g: Graph, i: int, env: Mapping[str, int]) -> int:
    n = g.nodes[i]
    if n.op is Op.MATMUL:
        k = _bind(g.nodes[n.srcs[0]].tensor.shape[-1], env)
        return 2 * _numel(g, i, env) * k
    if n.op is Op.CONV2D:
        _, cg, kh, kw = g.nodes[n.srcs[1]].tensor.shape
        return 2 * _numel(g, i, env) * int(cg) * int(kh) * int(kw)
    if n.op in (Op.MAX_POOL2D, Op.AVG_POOL2D):
        kh, kw = n.attrs["kernel"]
        return _numel(g, i, env) * kh * kw
    if n.op in REDUCE:
        return _numel(g, n.srcs[0], env)
    if n.op in ELEMENTWISE:
        return _numel(g, i, env)
    if n.op is Op.GET and g.nodes[n.srcs[0]].op in ATTENTION_OPS:
        return _attention_flops(g, n.srcs[0], n.attrs["index"], env)
    return 0


def _attention_flops(g: Graph, op: int, index: int, env: Mapping[str, int]) -> int:
    """The dots of an attention kernel (every tile, causal ones too), counted
    once per kernel at the GET of o, dq or dk: forward q k^T and p v; the dk/dv
    kernel recomputes q k^T and adds p^T do, do v^T and ds^T q; the dq kernel
    recomputes q k^T and do v^T and adds ds k."""
    n = g.nodes[op]
    q, k, v = (g.nodes[s].tensor.shape for s in n.srcs[:3])
    pairs = math.prod(_bind(d, env) for d in (*q[:-1], k[-2]))   # (query, key) pairs
    dk, d = _bind(q[-1], env), _bind(v[-1], env)
    if n.op is Op.ATTENTION:
        return 2 * pairs * (dk + d) if index == 0 else 0
    return {0: 2 * pairs * (2 * dk + d), 1: 4 * pairs * (dk + d)}.get(index, 0)
