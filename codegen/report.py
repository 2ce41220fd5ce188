"""What the generated kernels do, for people and for machines.

`describe` is `--emit kernels`: each distinct kernel with its grid and tiles
and every site that launches it (IR nodes, DSL lines, enclosing loops), then
every producer/consumer pair the fusion pass kept apart, with its reason.
`report` is `--emit report --json`: per launch site (`launches`) and per
distinct kernel (`kernels`) the ops, source lines, global memory bytes of one
launch (each buffer it reads or writes counted once: compulsory traffic at the
given dims) and flops, plus totals. A site inside a loop body launches once
per step; its `launches` says how many times.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from ember.ir import dims
from ember.ir.dtypes import DType
from ember.ir.graph import Graph, Node
from ember.ir.loc import DSLError
from ember.ir.ops import ATTENTION_OPS, ELEMENTWISE, REDUCE, Op
from ember.passes.fuse import Plan

from . import roofline
from .module import KernelCode, LaunchSite, Module


def describe(mod: Module) -> str:
    """`--emit kernels`: each distinct kernel, its launch, and every site that
    launches it with that site's IR nodes and DSL lines."""
    lines = []
    for code in mod.kernels:
        n = len(code.sites)
        lines.append(f"{code.name} [{code.kind}], {n} launch site{'s' if n > 1 else ''}")
        lines.append(f"    {_schedule(code)}")
        for site in code.sites:
            lines.append(f"    {_site(mod, site)}")
            lines += [f"        {loc}" for loc in source_lines(site)]
    lines += ["", f"{len(mod.launches)} launch sites of {len(mod.kernels)} distinct kernels"]
    unfused = _unfused(mod.plan)
    if unfused:
        lines.append("")
        lines.append("not fused:")
        lines += [f"    {u}" for u in unfused]
    return "\n".join(lines)


def _schedule(code: KernelCode) -> str:
    """How the kernel runs: its grid and its tiles."""
    grid = " x ".join(code.launch.grid)
    tiles = ", ".join(f"{k}={v}" for k, v in code.launch.constexprs.items())
    return f"grid {grid}; {tiles}"


def _site(mod: Module, site: LaunchSite) -> str:
    """The IR nodes one launch computes, and the loops it runs in."""
    g = site.plan.graph
    ops = " ".join(f"%{i}:{g.nodes[i].op.value}" for i in sorted(site.kernel.nodes))
    where = "".join(f"; once per step of loop %{n} (range({length}))"
                    for n, length in _enclosing_loops(mod.plan, site.plan) or [])
    return ops + where


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


def source_lines(site: LaunchSite) -> list[str]:
    return [f"{f}:{line}: {text}" for f, line, text in sorted(site.locs())]


def report(mod: Module, env: Mapping[str, int]) -> dict[str, Any]:
    """`--emit report --json`: per launch site and per distinct kernel, with totals."""
    sites = [_site_report(mod, site, env) for site in mod.launches]
    kernels = [_kernel_report(code, [s for s, site in zip(sites, mod.launches)
                                     if site.code is code]) for code in mod.kernels]
    total = {"kernels": len(kernels), "launch_sites": len(sites),
             "launches": sum(s["launches"] for s in sites),
             "bytes": sum(s["bytes"] * s["launches"] for s in sites),
             "flops": sum(s["flops"] * s["launches"] for s in sites),
             "est_us": sum(s["est_us"] * s["launches"] for s in sites),
             "target": roofline.H100.name}
    out = {"kernels": kernels, "launches": sites, "total": total}
    updates = [(site, s) for site, s in zip(mod.launches, sites) if site.kernel.kind == "foreach"]
    if updates:  # a training step: how the parameters are updated
        out["optimizer"] = {
            "kernels": sorted({s["name"] for _, s in updates}),
            "launches": sum(s["launches"] for _, s in updates),
            "tensors": sum(_anchor(site).attrs["groups"] for site, _ in updates
                           if not _anchor(site).attrs.get("reduce"))}
    return out


def _kernel_report(code: KernelCode, sites: list[dict[str, Any]]) -> dict[str, Any]:
    """A distinct kernel: what one launch moves and computes (the same at every
    site, since the sites share its text), its sites and its launches."""
    lines = sorted({line for s in sites for line in s["source_lines"]})
    return {"name": code.name, "kind": code.kind, "ops": sites[0]["ops"],
            "source_lines": lines, "bytes": sites[0]["bytes"], "flops": sites[0]["flops"],
            "sites": len(sites), "launches": sum(s["launches"] for s in sites),
            "est_us": sum(s["est_us"] * s["launches"] for s in sites),
            "bound": sites[0]["bound"]}


def _site_report(mod: Module, site: LaunchSite, env: Mapping[str, int]) -> dict[str, Any]:
    """One launch site; `launches` counts the steps of the loops it is in."""
    g = site.plan.graph
    reads = _selections(site)
    moved = sum(_footprint(g, i, reads.get(i), env) * g.nodes[i].tensor.dtype.itemsize
                for i in _buffers(site))
    moved += sum(math.prod(_bind(d, env) for d in shape) * dtype.itemsize
                 for _, shape, dtype in site.extras.values())
    loops = _enclosing_loops(mod.plan, site.plan) or []
    flops = sum(_flops(g, i, env) for i in site.kernel.nodes)
    computed = [site.kernel.anchor, *site.kernel.nodes]   # dq's kernel holds only its GET
    peak = roofline.arithmetic(site.kernel.kind, _operand_dtype(g, computed), mod.precision)
    seconds, bound = roofline.estimate(moved, flops, peak)
    return {"name": site.code.name, "kind": site.kernel.kind,
            "nodes": sorted(site.kernel.nodes),
            "ops": [g.nodes[i].op.value for i in sorted(site.kernel.nodes)],
            "source_lines": source_lines(site), "bytes": moved, "flops": flops,
            "launches": math.prod(_bind(length, env) for _, length in loops),
            "est_us": seconds * 1e6, "bound": bound, "peak": peak}


DOTS = (Op.MATMUL, Op.CONV2D, Op.ATTENTION, Op.ATTENTION_GRAD)


def _operand_dtype(g: Graph, nodes: list[int]) -> DType:
    """What a kernel computes on: its dots' operands (16-bit in mixed
    precision, while a dot accumulates and returns f32), else its first node's
    result."""
    dots = [g.nodes[i] for i in nodes if g.nodes[i].op in DOTS]
    if dots:
        return g.nodes[dots[0].srcs[0]].tensor.dtype
    t = g.nodes[nodes[0]].type
    return (t[0] if isinstance(t, tuple) else t).dtype


SELECTING = frozenset({Op.INDEX, Op.GATHER, Op.SLICE})


def _selections(site: LaunchSite) -> dict[int, list[int] | None]:
    """Buffer -> the selecting views (index, gather, slice) through which the
    kernel reads it, or None when some read takes it whole. A loop step reading
    x[:, t, :], or an embedding lookup, touches only what it selects."""
    g, plan = site.plan.graph, site.plan
    k = plan.kernels.index(site.kernel)
    out: dict[int, list[int] | None] = {}
    todo, seen = list(site.kernel.nodes), set()
    while todo:
        i = todo.pop()
        for s in g.nodes[i].srcs:
            if s in site.pointers.values() and (plan.home.get(i) == k or i not in plan.home):
                if g.nodes[i].op in SELECTING and g.nodes[i].srcs[0] == s:
                    sel = out.setdefault(s, [])
                    if sel is not None:
                        sel.append(i)
                else:
                    out[s] = None
            if plan.home.get(s) is None and s not in seen:   # computed inline here
                seen.add(s)
                todo.append(s)
    return out


def _footprint(g: Graph, i: int, selections: list[int] | None, env: Mapping[str, int]) -> int:
    """Elements of buffer i one launch touches."""
    whole = _numel(g, i, env)
    if not selections:
        return whole
    return min(whole, sum(_numel(g, s, env) for s in set(selections)))


def _anchor(site: LaunchSite) -> Node:
    return site.plan.graph.nodes[site.kernel.anchor]


def _buffers(site: LaunchSite) -> set[int]:
    """The buffers a launch reads or writes: its pointers, and for a
    multi-tensor kernel every group's tensors (reached through its table)."""
    out = set(site.pointers.values())
    if site.kernel.kind == "foreach":
        g = site.plan.graph
        out |= set(g.nodes[site.kernel.anchor].srcs) | set(site.kernel.outputs)
    return out


def _bind(d: dims.Dim, env: Mapping[str, int]) -> int:
    try:
        return dims.bind(d, env)
    except KeyError as e:
        raise DSLError(f"the report needs a value for dimension {e.args[0]}: pass --dims "
                       f"{e.args[0]}=N") from None


def _numel(g: Graph, i: int, env: Mapping[str, int]) -> int:
    return math.prod(_bind(d, env) for d in g.nodes[i].tensor.shape)


def _flops(g: Graph, i: int, env: Mapping[str, int]) -> int:
    n = g.nodes[i]
    if n.op is Op.MATMUL:
        k = _bind(g.nodes[n.srcs[0]].tensor.shape[-1], env)
        return 2 * _numel(g, i, env) * k
    if n.op is Op.CONV2D:
        _, cg, kh, kw = g.nodes[n.srcs[1]].tensor.shape
        return 2 * _numel(g, i, env) * _bind(cg, env) * int(kh) * int(kw)
    if n.op in (Op.MAX_POOL2D, Op.AVG_POOL2D):
        kh, kw = n.attrs["kernel"]
        return _numel(g, i, env) * kh * kw
    if n.op in REDUCE:
        return _numel(g, n.srcs[0], env)
    if n.op in ELEMENTWISE:
        return _numel(g, i, env)
    if n.op is Op.GET and g.nodes[n.srcs[0]].op in ATTENTION_OPS:
        return _attention_flops(g, n.srcs[0], n.attrs["index"], env)
    if n.op is Op.FOREACH:  # the region's ops on every element of every group
        body, arity = n.attrs["body"], n.attrs["arity"]
        ops = sum(m.op in ELEMENTWISE for m in body.nodes)
        return ops * sum(_numel(g, s, env) for s in n.srcs[:n.attrs["groups"] * arity:arity])
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
