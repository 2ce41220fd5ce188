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
"""

from __future__ import annotations

from ember.ir import dims
from ember.ir.dtypes import DType
from ember.ir.graph import Graph
from ember.ir.ops import Op
from ember.passes.fuse import Kernel, Plan

from . import blocks
from .ix import dim_text
from .templates import Launch
from .writer import KernelWriter


def foreach(w: KernelWriter) -> Launch:
    n = w.g.nodes[w.kernel.anchor]
    groups, arity, body = n.attrs["groups"], n.attrs["arity"], n.attrs["body"]
    results = _results(w)
    width = 2 + arity + len(body.outputs)
    w.extras["table_ptr"] = (table_var(w.kernel), (groups, width), DType.I64)
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
    for k, (o, get) in enumerate(zip(body.outputs, results)):
        v = region.value(o, ())
        w.line(f"tl.store({w.pointer(get)} + tl.load(row + {2 + arity + k}) + offs, "
               f"{v.text}, mask=mask)")
    numels = ", ".join(dim_text(dims.prod(w.shape(s))) for s in n.srcs[:groups * arity:arity])
    return Launch([f"blocks.foreach_programs(({numels},), BLOCK)"],
                  {"BLOCK": f"{blocks.FOREACH_BLOCK}",
                   "GROUPS": f"{blocks.next_pow2(groups)}"})


def table_var(kern: Kernel) -> str:
    return f"foreach{kern.anchor}_table"


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
    """The launcher line building the kernel's table from its buffers."""
    g = plan.graph
    n = g.nodes[kern.anchor]
    groups, arity = n.attrs["groups"], n.attrs["arity"]
    r = len(n.attrs["body"].outputs)
    gets = {g.nodes[i].attrs["index"]: i for i in kern.nodes if g.nodes[i].op is Op.GET}
    rows = []
    for k in range(groups):
        cols = [names[s] for s in n.srcs[k * arity:(k + 1) * arity]]
        cols += [names[gets[k * r + j]] for j in range(r)]
        rows.append("[" + ", ".join(cols) + "]")
    call = f"{table_var(kern)} = blocks.foreach_table([{', '.join(rows)}], BLOCK)"
    return [pad + call] if len(pad + call) <= 100 else [
        f"{pad}{table_var(kern)} = blocks.foreach_table([",
        *(f"{pad}    {row}," for row in rows), f"{pad}], BLOCK)"]
