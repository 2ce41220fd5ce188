"""emit_triton: a fused plan -> one Python module of Triton kernels + a launcher.

The module reads top to bottom like hand-written code: a header naming the
model, then per distinct kernel a comment with its ops and the DSL lines of
every site that launches it and the @triton.jit function, then `launch(...)`,
which binds dims, allocates buffers from a pool (reusing those whose last
reader has run), launches the kernels in order (each launch under a comment
naming the IR nodes it computes) and runs loop bodies once per step.

Kernels are emitted once: a kernel's text names buffers by position (`in0_ptr`,
`out0_ptr`, see ArgNames) and its locals canonically (canon.py), so the
repeated blocks of a model launch one kernel from many sites.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

from ember.ir import dims
from ember.ir.dims import Shape
from ember.ir.dtypes import DType
from ember.ir.graph import Graph, Node, walk_nodes
from ember.ir.loc import deep_recursion
from ember.ir.ops import Op
from ember.passes.fuse import Kernel, Plan, fuse

from . import canon
from .checks import BOUNDS, HEADER, Site, launcher_lines
from .flash_bwd import attention_dkdv, attention_dq
from .foreach import donations, foreach, setup_lines, teardown_lines
from .fused import attention, gates
from .ix import dim_name, dim_text
from .rules import PRELUDE, PTR_DTYPE
from .templates import Launch, matmul, pointwise, reduce
from .windows import conv, pool, pool_grad
from .writer import KernelWriter, sanitize

TEMPLATES = {"pointwise": pointwise, "reduce": reduce, "matmul": matmul, "conv": conv,
             "pool": pool, "pool_grad": pool_grad, "attention": attention, "gates": gates,
             "attention_dkdv": attention_dkdv, "attention_dq": attention_dq,
             "foreach": foreach}
TORCH_DTYPE = {"f32": "torch.float32", "f64": "torch.float64", "bf16": "torch.bfloat16",
               "f16": "torch.float16", "i32": "torch.int32", "i64": "torch.int64",
               "bool": "torch.bool"}


# Offsets are int32 (fast address arithmetic) unless a kernel touches a buffer
# of more than 2**31 - 1 elements: then its program ids, and so every offset
# derived from them, are int64. A symbolic size is checked at launch instead
# (blocks.int32_offsets), with a clear error rather than a silent wrap.
INT32_MAX = 2**31 - 1
WIDE = re.compile(r"tl\.program_id\(\d\)")


@dataclass
class KernelCode:
    """One distinct kernel: canonical code launched from one or more sites.

    Its text never names a site's buffers or IR nodes, so every site whose
    kernel reads the same (and is launched alike) shares it."""

    name: str
    kind: str
    params: list[str]
    body: list[str]                 # code lines, comments split off (canon.split)
    launch: Launch
    types: dict[str, str]           # argument -> type for an ahead-of-time compile
    sites: list[LaunchSite] = field(default_factory=list)

    @property
    def kernel(self) -> Kernel:
        """The IR group of the first launch site (all sites compute alike)."""
        return self.sites[0].kernel

    @property
    def source(self) -> str:
        """The kernel as emitted: the sites' DSL lines, then the function, each
        line's comment merged over the sites."""
        lines = [canon.join(code, canon.merge([s.comments[k] for s in self.sites]))
                 for k, code in enumerate(self.body)]
        signature = wrap_call(f"def {self.name}(", self.params, "):", "")
        return "\n".join([self._comment(), "@triton.jit", signature, *lines]) + "\n"

    def signature(self) -> dict[str, str]:
        """Argument types for an ahead-of-time compile."""
        return dict(self.types)

    def _comment(self) -> str:
        g = self.sites[0].plan.graph
        ops = ", ".join(g.nodes[i].op.value for i in sorted(self.kernel.nodes))
        n = len(self.sites)
        where = f"; {n} launch sites" if n > 1 else ""
        lines = [f"# {self.name}: {ops}{where}"]
        lines += [f"#   {f.rsplit('/', 1)[-1]}:{line}: {text}"
                  for f, line, text in sorted({loc for s in self.sites for loc in s.locs()})]
        return "\n".join(lines)


@dataclass
class LaunchSite:
    """One place the launcher launches a kernel: the IR group it computes there
    and what it passes for the kernel's arguments."""

    code: KernelCode
    kernel: Kernel
    plan: Plan
    pointers: dict[str, int]        # kernel arg -> buffer node
    scalars: dict[str, str]         # kernel arg -> launcher expression
    extras: dict[str, tuple[str, Shape, DType]]   # kernel arg -> (launcher var, shape, dtype)
    comments: list[str]             # this site's comment on each line of code.body

    def locs(self) -> set[tuple[str, int, str]]:
        """(file, line, source text) of the DSL lines this site computes (an
        attention kernel's include those of its score region)."""
        g = self.plan.graph
        nodes = [g.nodes[i] for i in self.kernel.nodes]
        nodes += [m for n in nodes if "body" in n.attrs for m in walk_nodes(n.attrs["body"])]
        return {(n.loc.file, n.loc.line, n.loc.source_line.strip()) for n in nodes if n.loc.line}


@dataclass
class Module:
    source: str
    kernels: list[KernelCode]       # distinct kernels, in order of first launch
    launches: list[LaunchSite]      # every launch site, in launcher order
    plan: Plan
    symbols: list[str]
    precision: str = "ieee"         # fp32 tl.dot precision (the roofline's peak)


@dataclass
class _State:
    precision: str
    kernels: dict[tuple[str, ...], KernelCode] = field(default_factory=dict)
    launches: list[LaunchSite] = field(default_factory=list)
    symbols: set[str] = field(default_factory=set)
    sites: list[Site] = field(default_factory=list)   # checked indices (checks.py)
    views: dict[str, str] = field(default_factory=dict)   # buffer -> row of a scan's stack
    narrow: set[str] = field(default_factory=set)   # symbolic sizes indexed with int32


def emit_triton(g: Graph, fused: bool = True, precision: str = "ieee",
                title: str = "") -> Module:
    """Generate the module for graph g."""
    with deep_recursion(f"'{g.name}' has an expression too long to generate one kernel "
                        f"for; split it with intermediate `let` values"):
        plan = fuse(g, enabled=fused)
        state = _State(precision, symbols=_all_symbols(g))
        body = _launcher(plan, state)
    codes = list(state.kernels.values())
    kernels = "\n\n".join(k.source for k in codes)
    header = _header(g, title, state)
    source = f"{header}\n{PRELUDE}\n\n{kernels}\n\n\n{body}\n"
    return Module(source, codes, state.launches, plan, sorted(state.symbols), precision)


def _all_symbols(g: Graph) -> set[str]:
    out: set[str] = set()
    for n in g.nodes:
        if n.type is not None and not isinstance(n.type, tuple):
            out |= dims.symbols(n.tensor.shape)
        if "body" in n.attrs:
            out |= _all_symbols(n.attrs["body"])
        if "length" in n.attrs:
            out |= dims.symbols((n.attrs["length"],))
    return out


def _header(g: Graph, title: str, state: _State) -> str:
    count = (f"{len(state.kernels)} distinct kernels launched from "
             f"{len(state.launches)} sites")
    lines = [f'"""Generated by ember: {title or g.name}, {count}.', "",
             "Do not edit: regenerate with `ember compile MODEL --emit triton -o DIR`.", '"""',
             "", "import torch", "import triton", "import triton.language as tl", "",
             "from ember.codegen import blocks", "from ember.runtime.rand import stream_seed"]
    if state.sites:
        lines.append(HEADER)
    return "\n".join(lines)


# ---- kernels ----------------------------------------------------------------------------

class ArgNames(Mapping[int, str]):
    """The kernel's names for the launcher's buffers: `out<k>` for its k-th
    output, `in<k>` for the others in the order it first reads them. Kernels
    that differ only in the buffers they are given then read the same."""

    def __init__(self, launcher: dict[int, str], outputs: list[int]) -> None:
        self.launcher = launcher
        self.given = {o: f"out{k}" for k, o in enumerate(outputs)}
        self.inputs = 0

    def __getitem__(self, i: int) -> str:
        if i not in self.launcher:
            raise KeyError(i)
        if i not in self.given:
            self.given[i], self.inputs = f"in{self.inputs}", self.inputs + 1
        return self.given[i]

    def __contains__(self, i: object) -> bool:
        return i in self.launcher

    def __iter__(self) -> Iterator[int]:
        return iter(self.launcher)

    def __len__(self) -> int:
        return len(self.launcher)


def _write_kernel(plan: Plan, kern: Kernel, names: dict[int, str], counters: dict[int, str],
                  state: _State) -> LaunchSite:
    """Write the kernel for one launch site; reuse an identical earlier kernel."""
    args = ArgNames(names, kern.outputs)
    w = KernelWriter(plan, kern, args, state.precision, counters=counters, sites=state.sites)
    launch = TEMPLATES[kern.kind](w)
    sizes = [dims.prod(plan.graph.nodes[i].tensor.shape) for i in w.pointers.values()]
    if any(isinstance(n, int) and n > INT32_MAX for n in sizes):
        w.lines[:] = [WIDE.sub(r"\g<0>.to(tl.int64)", line) for line in w.lines]
    else:
        state.narrow.update(dim_text(n) for n in sizes if not isinstance(n, int))
    code, comments = canon.split(w.lines)
    new = canon.renames(code, w.scalars)
    body = canon.rename(code, new)
    text = "\n".join(body)
    dim_args = [dim_name(s) for s in sorted(state.symbols)
                if re.search(rf"\b{re.escape(dim_name(s))}\b", text)]
    scalars = {new[s]: expr for s, expr in w.scalars.items()}
    types = _types(plan.graph, w, dim_args, list(scalars), launch)
    key = (text, repr(types), repr(launch))
    if key not in state.kernels:
        params = [a for a, t in types.items() if t != "constexpr"] + [
            f"{c}: tl.constexpr" for c in launch.constexprs]
        state.kernels[key] = KernelCode(f"k{len(state.kernels)}_{kern.name}", kern.kind, params,
                                        body, launch, types)
    extras = dict(w.extras)   # buffers of the launcher's own (checks.py)
    site = LaunchSite(state.kernels[key], kern, plan, dict(w.pointers), scalars, extras,
                      comments)
    site.code.sites.append(site)
    state.launches.append(site)
    return site


def _types(g: Graph, w: KernelWriter, dim_args: list[str], scalars: list[str],
           launch: Launch) -> dict[str, str]:
    """The kernel's arguments, in order, with their ahead-of-time types."""
    types = {p: PTR_DTYPE[g.nodes[i].tensor.dtype] for p, i in w.pointers.items()}
    types.update({p: PTR_DTYPE[dtype] for p, (_, _, dtype) in w.extras.items()})
    types.update({d: "i32" for d in dim_args + scalars})
    types.update({c: "constexpr" for c in launch.constexprs})
    return types


# ---- the launcher ----------------------------------------------------------------------

def _launcher(plan: Plan, state: _State) -> str:
    g = plan.graph
    lines = ['def launch(inputs, params, dims, seed, pool):',
             f'    """Run {g.name}: returns its outputs by name."""']
    lines += [f'    {dim_name(s)} = dims["{s}"]' for s in sorted(state.symbols)]
    names: dict[int, str] = {}
    for i in g.inputs:
        names[i] = unique(sanitize(g.nodes[i].attrs["name"]), names)
        lines.append(f'    {names[i]} = inputs["{g.nodes[i].attrs["name"]}"]')
    lines += _bind_params(g, names, "    ")
    steps = _plan_steps(plan, names, {}, state, "    ", "")
    if state.narrow:
        sizes = ", ".join(sorted(state.narrow))
        lines.append(f"    blocks.int32_offsets(({sizes},))")
    before, after = launcher_lines(state.sites, "    ")
    lines += before + _with_frees(steps, {names[o] for o in g.outputs if o in names}, "    ")
    lines += after
    outs = ", ".join(f'"{n}": {names[o]}' for n, o in zip(g.output_names, g.outputs))
    lines.append(f"    return {{{outs}}}")
    return "\n".join(lines)


LAUNCHER_LOCALS = frozenset({"inputs", "params", "dims", "seed", "pool", "torch", "triton",
                             "tl", "blocks", "stream_seed", "launch", BOUNDS, "Loc",
                             "new_bounds", "check_bounds"})


def unique(name: str, names: dict[int, str]) -> str:
    """A launcher variable no other value, generated name or local uses: inputs
    and parameters keep their names unless two sanitize alike (`a.w`, `a_w`),
    or one looks like an intermediate (`v12`) or a loop's (`l3_...`)."""
    taken = set(names.values())
    generated = re.fullmatch(r"v\d+|l\d+_.*|BLOCK\w*|[XR]BLOCK", name) is not None
    base, k = name, 1
    while name in taken or name in LAUNCHER_LOCALS or generated or name.isupper():
        name, k, generated = f"{base}_{k}", k + 1, False
    return name


def _bind_params(g: Graph, names: dict[int, str], pad: str) -> list[str]:
    lines = []
    for i, n in enumerate(g.nodes):
        if n.op is Op.PARAM:
            names[i] = unique(sanitize(n.attrs["name"]), names)
            lines.append(f'{pad}{names[i]} = params["{n.attrs["name"]}"]')
    return lines


Step = tuple[list[str], set[str], set[str]]   # (lines, reads, writes)


def _plan_steps(plan: Plan, names: dict[int, str], counters: dict[int, str], state: _State,
                pad: str, prefix: str) -> list[Step]:
    g = plan.graph
    for kern in plan.kernels:
        for o in kern.outputs:
            names[o] = f"{prefix}v{o}"
    steps: list[Step] = []
    for step in plan.order:
        if step >= 0:
            steps.append(_kernel_step(plan, plan.kernels[step], names, counters, state, pad))
        else:
            steps.append(_loop_step(plan, ~step, names, counters, state, pad, prefix))
    _alias_outputs(g, names)
    return steps


def _alias_outputs(g: Graph, names: dict[int, str]) -> None:
    for o in g.outputs:
        if o not in names and g.nodes[o].op is Op.GET:
            names[o] = names[g.nodes[o].srcs[0]]


def _kernel_step(plan: Plan, kern: Kernel, names: dict[int, str], counters: dict[int, str],
                 state: _State, pad: str) -> Step:
    site = _write_kernel(plan, kern, names, counters, state)
    code, g = site.code, plan.graph
    ops = [f"%{i} {g.nodes[i].op.value}" for i in sorted(kern.nodes)]
    lines = [f"{pad}# {part}" for part in _packed(ops, 98 - len(pad))]
    if kern.kind == "foreach":  # an update stored over the state it replaces
        state.views.update({names[get]: names[src] for get, src in donations(plan, kern).items()})
    own = [] if kern.kind == "foreach" else [  # its table is built below
        e for e in site.extras.values() if not e[0].startswith(BOUNDS)]
    buffers = [(names[o], g.nodes[o].tensor.shape, g.nodes[o].tensor.dtype)
               for o in kern.outputs] + own
    for var, shape, dtype in buffers:
        dims_text = ", ".join(dim_text(d) for d in shape) + ("," if len(shape) == 1 else "")
        lines.append(f"{pad}{var} = {state.views[var]}" if var in state.views else
                     f"{pad}{var} = pool.empty(({dims_text}), {TORCH_DTYPE[dtype.value]})")
    consts = code.launch.constexprs
    lines.append(f"{pad}{', '.join([*consts, 'WARPS', 'STAGES'])} = {code.launch.values()}")
    if kern.kind == "foreach":
        lines += setup_lines(plan, kern, names, pad)
    grid = ", ".join(code.launch.grid) + ("," if len(code.launch.grid) == 1 else "")
    bound = {**{p: names[i] for p, i in site.pointers.items()},
             **{p: var for p, (var, _, _) in site.extras.items()}, **site.scalars}
    args = [bound.get(p, p) for p, t in code.types.items() if t != "constexpr"]
    args += [f"{c}={c}" for c in consts] + ["num_warps=WARPS", "num_stages=STAGES"]
    lines.append(wrap_call(f"{pad}{code.name}[({grid})](", args, ")", pad))
    read = list(site.pointers.values())
    if kern.kind == "foreach":  # every group's operands, through the table
        lines += teardown_lines(plan, kern, pad)
        read += [s for s in g.nodes[kern.anchor].srcs if s in names]
    reads = {names[i] for i in read} - {names[o] for o in kern.outputs}
    return lines, reads, {names[o] for o in kern.outputs}


def _packed(items: list[str], width: int) -> list[str]:
    """Comma-separated items on as few lines of at most `width` as fit them."""
    lines = [items[0]]
    for item in items[1:]:
        if len(lines[-1]) + len(item) + 2 > width:
            lines[-1] += ","
            lines.append(item)
        else:
            lines[-1] += ", " + item
    return lines


def wrap_call(head: str, args: list[str], tail: str, pad: str, width: int = 100) -> str:
    """`head` + args + `tail` on one line if it fits, else args packed onto
    continuation lines indented under the call, as a person would write it."""
    one = head + ", ".join(args) + tail
    if len(one) <= width:
        return one
    lines, line = [], head
    for k, a in enumerate(args):
        piece = a + (", " if k < len(args) - 1 else tail)
        if len(line) + len(piece.rstrip()) > width and line.strip():
            lines.append(line.rstrip())
            line = pad + "        "
        line += piece
    return "\n".join(lines + [line])


def _loop_step(plan: Plan, node: int, names: dict[int, str], counters: dict[int, str],
               state: _State, pad: str, prefix: str) -> Step:
    """A scan: carried state in buffers of its own, one step of each xs bound
    as a view per step, each per-step output copied into its stacked buffer."""
    g = plan.graph
    n = g.nodes[node]
    body_plan = plan.loops[node]
    body = body_plan.graph
    lp = f"{prefix}l{node}_"
    inner: dict[int, str] = {}
    step_var = lp + unique(sanitize(body.nodes[body.inputs[0]].attrs["name"]), {})
    inner_counters = {**counters, body.inputs[0]: step_var}
    n_carry, n_xs = n.attrs["n_carry"], n.attrs.get("n_xs", 0)
    lines = [f"{pad}# loop %{node}: {n_carry} carried values, {n_xs} per-step inputs, "
             f"{len(n.srcs) - n_carry - n_xs} captured, {len(body.outputs) - n_carry} "
             f"per-step outputs" + (", in reverse" if n.attrs.get("reverse") else "")]
    per_step = []
    for k, (bi, src) in enumerate(zip(body.inputs[1:], n.srcs)):
        if src in counters:  # an outer loop's counter: a scalar, not a buffer
            inner_counters[bi] = counters[src]
            continue
        # prefixed like the body's own values (l5_v12), so checked like them
        inner[bi] = lp + unique(sanitize(body.nodes[bi].attrs["name"]), inner)
        if n_carry <= k < n_carry + n_xs:
            per_step.append(f"{pad}    {inner[bi]} = {names[src]}[{step_var}]")
            continue
        # carried state gets buffers of its own, so freeing or reusing the
        # initial values' buffers after the loop cannot touch it
        own = ".clone()" if k < n_carry else ""
        lines.append(f"{pad}{inner[bi]} = {names[src]}{own}")
    lines += _bind_params(body, inner, pad)
    ys = _stacked_outputs(n, body, lp, pad, lines)
    direct = _store_in_place(body_plan, ys, lp, step_var, state)
    length = dim_text(n.attrs["length"])
    steps = f"{length} - 1, -1, -1" if n.attrs.get("reverse") else length
    lines.append(f"{pad}for {step_var} in range({steps}):")
    lines += per_step
    body_steps = _plan_steps(body_plan, inner, inner_counters, state, pad + "    ", lp)
    carries = [inner[b] for b in body.inputs[1:1 + n_carry]]
    captured = {inner[b] for b in body.inputs[1 + n_carry:] if b in inner}
    outs = [inner[o] + (".clone()" if inner[o] in captured else "")
            for o in body.outputs[:n_carry]]
    y_outs = [inner[o] for o in body.outputs[n_carry:]]
    lines += _with_frees(body_steps, set(outs) | set(carries) | set(y_outs), pad + "    ")
    made = set().union(*(w for _, _, w in body_steps)) if body_steps else set()
    lines += [f"{pad}    {y}[{step_var}].copy_({v})" for y, v in zip(ys, y_outs)
              if v not in direct]
    lines += [f"{pad}    pool.free({v})" for v in dict.fromkeys(y_outs)
              if v in made and v not in outs and v not in direct]
    if carries:
        # last step's state is dead once no new value is it (a swap keeps both)
        lines += [f"{pad}    pool.free({c})" for c in carries if c not in outs]
        lines.append(f"{pad}    {', '.join(carries)} = {', '.join(outs)}")
    results = carries + ys
    for get, m in enumerate(g.nodes):
        if m.op is Op.GET and m.srcs[0] == node:
            names[get] = results[m.attrs["index"]]
    reads = {names[s] for s in n.srcs if s in names}
    return lines, reads, set(results)


def _store_in_place(body_plan: Plan, ys: list[str], lp: str, step_var: str,
                    state: _State) -> set[str]:
    """Per-step outputs that a kernel of the body computes (and no carry or
    other output shares) are stored straight into row t of their stack."""
    body = body_plan.graph
    k = len(body.outputs) - len(ys)
    computed = {o for kern in body_plan.kernels for o in kern.outputs}
    direct = set()
    for y, o in zip(ys, body.outputs[k:]):
        if o in computed and list(body.outputs).count(o) == 1:
            state.views[f"{lp}v{o}"] = f"{y}[{step_var}]"
            direct.add(f"{lp}v{o}")
    return direct


def _stacked_outputs(n: Node, body: Graph, lp: str, pad: str, lines: list[str]) -> list[str]:
    """Allocate a [length, ...] buffer for each per-step output."""
    ys = []
    for j, o in enumerate(body.outputs[n.attrs["n_carry"]:]):
        t = body.nodes[o].tensor
        shape = ", ".join(dim_text(d) for d in (n.attrs["length"], *t.shape))
        ys.append(f"{lp}ys{j}")
        lines.append(f"{pad}{ys[-1]} = pool.empty(({shape},), {TORCH_DTYPE[t.dtype.value]})")
    return ys


def _with_frees(steps: list[Step], keep: set[str], pad: str) -> list[str]:
    """Concatenate steps, returning each intermediate buffer to the pool after
    the last step that reads it."""
    last: dict[str, int] = {}
    made: set[str] = set()
    for k, (_, reads, writes) in enumerate(steps):
        made |= writes
        for r in reads:
            last[r] = k
    lines: list[str] = []
    for k, (body, _, _) in enumerate(steps):
        lines += body
        dead = sorted(v for v, at in last.items() if at == k and v in made and v not in keep)
        lines += [f"{pad}pool.free({v})" for v in dead]
    return lines
