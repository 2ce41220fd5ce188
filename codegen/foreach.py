"""The multi-tensor template: one launch applies a foreach op's region to
every group of tensors (the optimizer's update of all parameters), as
torch's foreach/fused optimizers and apex's multi_tensor_apply do.

The launcher lays the groups out in a table, one row per group:

    [first program, numel, offset of operand 0, ..., offset of result 0, ...]

Offsets are in elements from the group-0 tensor of the same column, so the
kernel takes one base pointer per column however many groups there are.
Each program finds its group among the rows' first programs, then covers
BLOCK elements of it: load the group's operands, run the region, store the
results.

A summing foreach (reduce=True, a gradient norm) stores one partial sum per
program instead; the program that finishes last (an atomic counter after the
table) adds the partial sums in program order, so the result does not depend
on scheduling, and computes the kernel's scalar epilogue (the norm's square
root, the clipping factor) in the same launch.
"""

from __future__ import annotations

from ember.ir import dims
from ember.ir.dtypes import DType
from ember.ir.graph import Graph, Node
from ember.ir.ops import Op
from ember.passes.fuse import Kernel, Plan, depends_on

from . import blocks
from .ix import Ix, dim_text
from .rules import TL_DTYPE
from .templates import Launch
from .writer import KernelWriter


def foreach(w: KernelWriter) -> Launch:
    n = w.g.nodes[w.kernel.anchor]
    groups, arity, body = n.attrs["groups"], n.attrs["arity"], n.attrs["body"]
    reduce = bool(n.attrs.get("reduce"))
    width = _width(n)
    w.extras["table_ptr"] = (var(w.kernel, "table"), (groups * width + reduce,), DType.I64)
    w.line("pid = tl.program_id(0)")
    w.line("g = tl.arange(0, GROUPS)")
    w.line(f"firsts = tl.load(table_ptr + g * {width}, mask=g < {groups}, other=2147483647)")
    w.line("row = table_ptr + (tl.sum((firsts <= pid).to(tl.int32), axis=0) - 1) * "
           f"{width}")
    w.line("offs = (pid - tl.load(row)) * BLOCK + tl.arange(0, BLOCK)")
    w.line("mask = offs < tl.load(row + 1)")
    w.axes(x=("offs", "mask"))
    region = _region_writer(w, body)
    for k, (b, src) in enumerate(zip(body.inputs, n.srcs[:arity])):
        region.remember(b, (), w.let(w.fresh(_name(body, b)), f"tl.load({w.pointer(src)} + "
                                     f"tl.load(row + {2 + k}) + offs, mask=mask, other=0)",
                                     frozenset("x")))
    for b, src in zip(body.inputs[arity:], n.srcs[groups * arity:]):
        region.remember(b, (), w.let(w.fresh(_name(body, b)), f"tl.load({w.pointer(src)})",
                                     frozenset()))
    values = [region.value(o, ()).text for o in body.outputs]
    if reduce:
        _sum_and_finish(w, n, values)
    else:
        for k, (get, v) in enumerate(zip(_results(w), values)):
            w.line(f"tl.store({w.pointer(get)} + tl.load(row + {2 + arity + k}) + offs, {v}, "
                   f"mask=mask)")
    return Launch([f"blocks.foreach_programs(({_numels(w.g, n)},), BLOCK)"],
                  {"BLOCK": f"{blocks.FOREACH_BLOCK}",
                   "GROUPS": f"{blocks.next_pow2(groups)}"})


def _sum_and_finish(w: KernelWriter, n: Node, values: list[str]) -> None:
    """Partial sums per program; the last program to finish adds them up and
    computes the rest of the kernel."""
    r, dtype = len(values), _result_dtype(n)
    w.extras["partials_ptr"] = (var(w.kernel, "partials"), (_programs(w.g, n) * r,), dtype)
    for j, v in enumerate(values):
        w.line(f"tl.store(partials_ptr + pid * {r} + {j}, "
               f"tl.sum(tl.where(mask, {v}, 0.0), axis=0))")
    w.line(f"done = tl.atomic_add(table_ptr + {n.attrs['groups'] * _width(n)}, 1)")
    w.line("if done == tl.num_programs(0) - 1:  # the last one: every partial sum is stored")
    w.push()
    w.line("p = tl.arange(0, BLOCK)")
    gets = {w.g.nodes[i].attrs["index"]: i for i in w.kernel.nodes if w.g.nodes[i].op is Op.GET}
    for j in range(r):
        acc = w.fresh(f"total{j}")
        w.line(f"{acc} = tl.zeros([BLOCK], {TL_DTYPE[dtype]})")
        w.line("for start in range(0, tl.num_programs(0), BLOCK):")
        w.line(f"    {acc} += tl.load(partials_ptr + (start + p) * {r} + {j}, "
               f"mask=start + p < tl.num_programs(0), other=0)")
        w.line(f"{acc} = tl.sum({acc}, axis=0)")
        if j in gets:
            w.remember(gets[j], (), Ix(acc))
    for o in w.kernel.outputs:
        w.store(o, (), w.value(o, ()))
    w.pop()


def _result_dtype(n: Node) -> DType:
    body = n.attrs["body"]
    return body.nodes[body.outputs[0]].tensor.dtype


def _width(n: Node) -> int:
    """A table row: first program, numel, operand offsets, result offsets."""
    results = 0 if n.attrs.get("reduce") else len(n.attrs["body"].outputs)
    return 2 + n.attrs["arity"] + results


def _numels(g: Graph, n: Node) -> str:
    groups, arity = n.attrs["groups"], n.attrs["arity"]
    return ", ".join(dim_text(dims.prod(g.nodes[s].tensor.shape))
                     for s in n.srcs[:groups * arity:arity])


def _programs(g: Graph, n: Node) -> int:
    """The launch's program count when the shapes are static (else 1: the
    report's estimate of the partial sums' bytes)."""
    groups, arity = n.attrs["groups"], n.attrs["arity"]
    sizes = [dims.prod(g.nodes[s].tensor.shape) for s in n.srcs[:groups * arity:arity]]
    if not all(isinstance(s, int) for s in sizes):
        return 1
    return blocks.foreach_programs(tuple(int(s) for s in sizes), blocks.FOREACH_BLOCK)


def donations(plan: Plan, kern: Kernel) -> dict[int, int]:
    """Result GET -> the operand (a parameter or buffer the step replaces)
    whose memory it may take: every other reader of that operand runs before
    this kernel (the foreach op's `donate` pairs say which result may take
    which operand's place; reading and writing the same element in the same
    program is safe)."""
    g = plan.graph
    n = g.nodes[kern.anchor]
    if n.attrs.get("reduce"):
        return {}
    groups, arity, r = n.attrs["groups"], n.attrs["arity"], len(n.attrs["body"].outputs)
    gets = {g.nodes[i].attrs["index"]: i for i in kern.nodes if g.nodes[i].op is Op.GET}
    users, outputs = g.users(), set(g.outputs)
    k = plan.kernels.index(kern)
    out = {}
    for group in range(groups):
        for j, operand in n.attrs.get("donate", ()):
            src = n.srcs[group * arity + operand]
            if (g.nodes[src].op is Op.PARAM and src not in outputs
                    and n.srcs.count(src) == 1
                    and all(_runs_before(plan, k, u) for u in users[src] if u != kern.anchor)):
                out[gets[group * r + j]] = src
    return out


def _runs_before(plan: Plan, k: int, node: int) -> bool:
    """Has every kernel that reads `node`'s value run before kernel k starts?"""
    home = plan.home.get(node)
    if home is not None:
        return home != k and depends_on(plan, k, home)
    if plan.graph.nodes[node].op is Op.LOOP:
        return depends_on(plan, k, ~node)
    if node in plan.graph.outputs:
        return False
    return all(_runs_before(plan, k, u) for u in plan.graph.users()[node])


def var(kern: Kernel, what: str) -> str:
    return f"foreach{kern.anchor}_{what}"


def _results(w: KernelWriter) -> list[int]:
    """The GETs of group 0's results, in result order: each column's base."""
    g, anchor = w.g, w.kernel.anchor
    gets = {g.nodes[i].attrs["index"]: i for i in w.kernel.nodes if g.nodes[i].op is Op.GET}
    r = len(g.nodes[anchor].attrs["body"].outputs)
    missing = [k for k in range(r * g.nodes[anchor].attrs["groups"]) if k not in gets]
    assert not missing, f"foreach %{anchor}: results {missing} are never read"
    return [gets[k] for k in range(r)]


def _name(body: Graph, i: int) -> str:
    return body.nodes[i].attrs["name"].replace(".", "_")


def _region_writer(w: KernelWriter, body: Graph) -> KernelWriter:
    """A writer over the region that appends to w's kernel: every region node is
    computed there (nothing is loaded), its inputs bound by the caller."""
    nodes = list(range(len(body.nodes)))
    plan = Plan(body, [Kernel("region", body.outputs[0], nodes)], dict.fromkeys(nodes, 0),
                {}, [])
    return KernelWriter(plan, plan.kernels[0], {}, w.precision, lines=w.lines, depth=w.depth,
                        masks=w.masks, axis_vars=w.axis_vars, used=w.used, sites=w.sites)


def setup_lines(plan: Plan, kern: Kernel, names: dict[int, str], pad: str) -> list[str]:
    """Launcher lines before the launch: the table from the buffers (and, for
    a summing foreach, room for its partial sums)."""
    g = plan.graph
    n = g.nodes[kern.anchor]
    groups, arity = n.attrs["groups"], n.attrs["arity"]
    reduce = bool(n.attrs.get("reduce"))
    r = len(n.attrs["body"].outputs)
    gets = {g.nodes[i].attrs["index"]: i for i in kern.nodes if g.nodes[i].op is Op.GET}
    rows = []
    for k in range(groups):
        cols = [names[s] for s in n.srcs[k * arity:(k + 1) * arity]]
        cols += [] if reduce else [names[gets[k * r + j]] for j in range(r)]
        rows.append("[" + ", ".join(cols) + "]")
    end = f"], BLOCK{', counter=True' if reduce else ''})"
    call = f"{var(kern, 'table')} = blocks.foreach_table([{', '.join(rows)}{end}"
    lines = [pad + call] if len(pad + call) <= 100 else [
        f"{pad}{var(kern, 'table')} = blocks.foreach_table([",
        *(f"{pad}    {row}," for row in rows), f"{pad}{end}"]
    if reduce:
        torch_dtype = "torch.float64" if _result_dtype(n) is DType.F64 else "torch.float32"
        lines.append(f"{pad}{var(kern, 'partials')} = pool.empty((blocks.foreach_programs(("
                     f"{_numels(g, n)},), BLOCK) * {r},), {torch_dtype})")
    return lines


def teardown_lines(plan: Plan, kern: Kernel, pad: str) -> list[str]:
    """After the launch: a summing foreach's partial sums are dead."""
    reduce = plan.graph.nodes[kern.anchor].attrs.get("reduce")
    return [f"{pad}pool.free({var(kern, 'partials')})"] if reduce else []
