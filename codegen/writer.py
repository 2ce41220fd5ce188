"""KernelWriter: the value-at-index machinery every kernel template uses.

`value(node, idx)` returns the Triton expression of `node` at a multi-index,
emitting lines as needed: buffers are loaded (masked by the masks of the tile
axes the offset uses), views (reshape, permute, slice, gather, ...) become index
arithmetic, elementwise ops become one line each via `triton_rules`. Values
are memoized per (node, index) within a scope, so a subexpression is computed
once; scopes are pushed for loop bodies (the K loop of a matmul, a pool
window) whose values must not leak out.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ember.ir.dims import Dim, Shape
from ember.ir.dtypes import DType
from ember.ir.graph import Graph, Node
from ember.ir.ops import ELEMENTWISE, Op
from ember.passes.fuse import Kernel, Plan

from . import ix
from .checks import Site, checked_index, guard_rows
from .ix import Ix
from .rules import TL_DTYPE, triton_rules

IDENT = re.compile(r"[^0-9a-zA-Z_]")


def sanitize(name: str) -> str:
    return IDENT.sub("_", name)


def float_literal(v: float) -> str:
    """A float as kernel source: repr, except inf and nan, which have none."""
    if math.isnan(v):
        return 'float("nan")'
    if math.isinf(v):
        return 'float("inf")' if v > 0 else '-float("inf")'
    return repr(v)


# Locals the kernel templates assign themselves; loads and values never take them.
RESERVED = frozenset({
    "pid", "pid_m", "pid_n", "pid_b", "offs", "mask", "rows", "xmask", "r", "rmask", "rm",
    "rn", "rq", "rd", "rdk", "rnk", "ka", "kb", "k0", "acc", "acc0", "acc1", "acc2", "acc3",
    "m_i", "l_i", "m_new", "m_safe", "m_fin", "l_safe", "alpha", "p", "scores", "qk", "out", "hi",
    "start", "inside", "ih", "iw", "oh", "ow", "batch", "ch", "group", "oc", "ca", "cb", "kha",
    "kwa", "khb", "kwb", "i", "j", "tl", "triton", "stores_a", "colsum", "stores_colsum",
    "id_bounds_ptr"})


@dataclass
class KernelWriter:
    plan: Plan
    kernel: Kernel
    names: Mapping[int, str]               # buffer node -> its name in the kernel
    precision: str = "ieee"
    lines: list[str] = field(default_factory=list)
    depth: int = 1
    masks: dict[str, str] = field(default_factory=dict)
    extra_mask: str = ""
    memo: list[dict[Any, Ix]] = field(default_factory=lambda: [{}])
    pointers: dict[str, int] = field(default_factory=dict)   # arg name -> node
    scalars: dict[str, str] = field(default_factory=dict)    # arg name -> launcher expr
    loads: set[str] = field(default_factory=set)
    counters: dict[int, str] = field(default_factory=dict)   # loop counter -> launcher var
    extras: dict[str, tuple[str, Shape, DType]] = field(default_factory=dict)
    axis_vars: dict[str, str] = field(default_factory=dict)   # tile axis -> its index var
    used: set[str] = field(default_factory=set)               # locals handed out by fresh
    sites: list[Site] = field(default_factory=list)           # checked indices, whole module

    @property
    def g(self) -> Graph:
        return self.plan.graph

    # ---- text ----------------------------------------------------------------
    def line(self, text: str, node: int | None = None) -> None:
        comment = ""
        if node is not None:
            n = self.g.nodes[node]
            where = f" @ {n.loc.file.rsplit('/', 1)[-1]}:{n.loc.line}" if n.loc.line else ""
            comment = f"  # {n.op.value}{where}"
        self.lines.append("    " * self.depth + text + comment)
        target = text.split(" = ", 1)[0] if " = " in text else ""
        if target.isidentifier():
            self.used.add(target)

    def let(self, name: str, expr: str, axes: frozenset[str], node: int | None = None) -> Ix:
        self.line(f"{name} = {expr}", node)
        return Ix(name, axes)

    def fresh(self, base: str) -> str:
        """A new local name: never one the templates use for their own locals."""
        name, k = base, 1
        while name in self.used or name in RESERVED:
            name, k = f"{base}_{k}", k + 1
        self.used.add(name)
        return name

    def push(self) -> None:
        self.memo.append({})
        self.depth += 1

    def pop(self) -> None:
        self.memo.pop()
        self.depth -= 1

    # ---- values ----------------------------------------------------------------
    def remember(self, node: int, idx: tuple[Ix, ...], v: Ix) -> None:
        self.memo[-1][self._key(node, idx)] = v

    def _key(self, node: int, idx: tuple[Ix, ...]) -> Any:
        # a size-1 dim has one valid index, so requests spelling it "0" or "rm"
        # (a tile axis that is 0 on every valid lane) ask for the same value
        shape = self.g.nodes[node].tensor.shape if idx else ()
        text = tuple("0" if d == 1 else i.text for i, d in zip(idx, shape))
        return node, text, self.extra_mask

    def value(self, i: int, idx: tuple[Ix, ...]) -> Ix:
        key = self._key(i, idx)
        for scope in reversed(self.memo):
            if key in scope:
                return scope[key]
        v = self._compute(i, idx)
        self.memo[-1][key] = v
        return v

    def is_buffer(self, i: int) -> bool:
        """Is node i read from memory by this kernel (rather than computed here)?"""
        home = self.plan.home.get(i)
        return i in self.names and home != self._index

    @property
    def _index(self) -> int:
        return self.plan.kernels.index(self.kernel)

    def _compute(self, i: int, idx: tuple[Ix, ...]) -> Ix:
        n = self.g.nodes[i]
        if self.is_buffer(i) and n.op is not Op.CONST:
            return self.load(i, idx)
        if n.op in ELEMENTWISE:
            return self._elementwise(i, n, idx)
        rule = VIEW_RULES.get(n.op)
        if rule is None:
            raise AssertionError(f"{n.op.value} %{i} must be computed by its kernel template")
        return rule(self, i, n, idx)

    def _elementwise(self, i: int, n: Node, idx: tuple[Ix, ...]) -> Ix:
        args = [self.value(s, ix.broadcast_index(idx, n.tensor.shape, self.shape(s)))
                for s in n.srcs]
        if n.op is Op.CAST:
            expr = f"{args[0]}.to({TL_DTYPE[n.attrs['dtype']]})"
        elif n.op is Op.POW and self.g.nodes[n.srcs[1]].op is Op.CONST:
            expr = _const_pow(args[0].text, self.g.nodes[n.srcs[1]].attrs["value"])
        else:
            expr = triton_rules[n.op].format(*(a.text for a in args))
        axes = frozenset().union(*(a.axes for a in args))
        return self.let(self.fresh(f"{n.op.value}{i}"), expr, axes, i)

    def shape(self, i: int) -> Shape:
        return self.g.nodes[i].tensor.shape

    def dtype(self, i: int) -> DType:
        return self.g.nodes[i].tensor.dtype

    # ---- memory ------------------------------------------------------------------
    def pointer(self, i: int) -> str:
        name = f"{self.names[i]}_ptr"
        self.pointers[name] = i
        return name

    def offset(self, i: int, idx: tuple[Ix, ...]) -> Ix:
        return ix.linear(idx, self.shape(i))

    def axes(self, **masks: tuple[str, str]) -> None:
        """Declare tile axes: name -> (index variable, mask expression)."""
        for axis, (var, mask) in masks.items():
            self.axis_vars[axis] = var
            self.masks[axis] = mask

    def mask_for(self, axes: frozenset[str]) -> str:
        parts = [self.masks[a] for a in sorted(axes) if a in self.masks]
        if self.extra_mask:
            parts.append(self.extra_mask)
        return " & ".join(parts)

    def load(self, i: int, idx: tuple[Ix, ...]) -> Ix:
        off = self.offset(i, idx)
        ptr = self.pointer(i)
        # an address constant over the tile is one element inside the buffer
        # (constant indices, data-dependent ones clamped): it needs no mask, and
        # a block mask beside a scalar address is an error in Triton
        mask = self.mask_for(off.axes) if off.axes else ""
        addr = ptr if off.text == "0" else f"{ptr} + {off.text}"
        expr = f"tl.load({addr}, mask={mask}, other=0)" if mask else f"tl.load({addr})"
        v = self.let(self.fresh(self.names[i]), expr, off.axes)
        self.loads.add(v.text)
        return v

    def store(self, i: int, idx: tuple[Ix, ...], v: Ix, off: Ix | None = None) -> None:
        off = off or self.offset(i, idx)
        for axis in sorted(v.axes - off.axes):  # e.g. a scalar result of a row tile
            off = ix.add(off, Ix(f"0 * {self.axis_vars[axis]}", frozenset({axis})))
        mask = self.mask_for(off.axes)
        addr = self.pointer(i) if off.text == "0" else f"{self.pointer(i)} + {off.text}"
        self.line(f"tl.store({addr}, {v.text}" + (f", mask={mask})" if mask else ")"))

    def constant(self, value: Any, dtype: DType) -> Ix:
        if dtype is DType.BOOL:
            return Ix("1" if value else "0")
        if not dtype.is_float:
            return Ix(str(int(value)))
        text = float_literal(float(value))
        return Ix(f"tl.full([], {text}, tl.float64)" if dtype is DType.F64 else text)


def _const_pow(x: str, p: float) -> str:
    """x ** p for a constant p: exact products and roots where they exist,
    matching the oracle's np.power bit for bit on the common exponents."""
    forms = {1.0: "{x}", 2.0: "{x} * {x}", 3.0: "{x} * {x} * {x}", 0.5: "tl.sqrt({x})",
             -0.5: "tl.rsqrt({x})", -1.0: "1.0 / {x}"}
    return forms.get(float(p), "_pow({x}, " + repr(float(p)) + ")").format(x=x)


# ---- views and leaves: index arithmetic, no data movement ---------------------------

def _const(w: KernelWriter, i: int, n: Node, idx: tuple[Ix, ...]) -> Ix:
    return w.constant(n.attrs["value"], n.tensor.dtype)


def _iota(w: KernelWriter, i: int, n: Node, idx: tuple[Ix, ...]) -> Ix:
    return idx[n.attrs["axis"]]


def _rand(w: KernelWriter, i: int, n: Node, idx: tuple[Ix, ...]) -> Ix:
    seed = "seed_" + sanitize(n.attrs["stream"])
    steps = "".join(f"{w.counters.get(s) or w.names[s]}, " for s in n.srcs)
    w.scalars[seed] = f"stream_seed(seed, {n.attrs['stream']!r}, ({steps}))"
    flat = ix.linear(idx, n.tensor.shape)
    # a constant offset (a 0-d draw) as a tensor: the interpreter's tl.rand needs one
    offset = flat.text if flat.axes else f"tl.full((), {flat.text}, tl.int32)"
    return w.let(w.fresh(f"rand{i}"), f"tl.rand({seed}, {offset})", flat.axes, i)


def _reshape(w: KernelWriter, i: int, n: Node, idx: tuple[Ix, ...]) -> Ix:
    src = n.srcs[0]
    return w.value(src, ix.reshape_index(idx, n.tensor.shape, w.shape(src)))


def _permute(w: KernelWriter, i: int, n: Node, idx: tuple[Ix, ...]) -> Ix:
    src_idx: list[Ix] = [ix.ZERO] * len(idx)
    for k, p in enumerate(n.attrs["perm"]):
        src_idx[p] = idx[k]
    return w.value(n.srcs[0], tuple(src_idx))


def _expand(w: KernelWriter, i: int, n: Node, idx: tuple[Ix, ...]) -> Ix:
    return w.value(n.srcs[0], ix.broadcast_index(idx, n.tensor.shape, w.shape(n.srcs[0])))


def _slice(w: KernelWriter, i: int, n: Node, idx: tuple[Ix, ...]) -> Ix:
    src_idx = tuple(ix.add(Ix(str(start)), ix.mul(k, step))
                    for k, start, step in zip(idx, n.attrs["starts"], n.attrs["steps"]))
    return w.value(n.srcs[0], src_idx)


def _index(w: KernelWriter, i: int, n: Node, idx: tuple[Ix, ...]) -> Ix:
    axis = n.attrs["axis"]
    rows = w.shape(n.srcs[0])[axis]
    at = checked_index(w, i, "index", w.value(n.srcs[1], ()), rows)
    return _at_row(w, n.srcs[0], at, rows, idx[:axis] + (at,) + idx[axis:])


def _gather(w: KernelWriter, i: int, n: Node, idx: tuple[Ix, ...]) -> Ix:
    table, ids = n.srcs
    rank = len(w.shape(ids))
    rows = w.shape(table)[0]
    row = checked_index(w, i, "gather", w.value(ids, idx[:rank]), rows)
    return _at_row(w, table, row, rows, (row,) + idx[rank:])


def _at_row(w: KernelWriter, src: int, row: Ix, rows: Dim, idx: tuple[Ix, ...]) -> Ix:
    """src at an index holding `row`, a clamped data-dependent row (checks.py)."""
    saved, w.extra_mask = w.extra_mask, guard_rows(w, row, rows)
    try:
        return w.value(src, idx)
    finally:
        w.extra_mask = saved


def _concat(w: KernelWriter, i: int, n: Node, idx: tuple[Ix, ...]) -> Ix:
    if len(n.srcs) == 1:  # concat of one tensor (its axis may be symbolic)
        return w.value(n.srcs[0], idx)
    axis, at = n.attrs["axis"], idx[n.attrs["axis"]]
    parts, start = [], 0
    for k, s in enumerate(n.srcs):
        size = w.shape(s)[axis]
        local = Ix(f"tl.minimum(tl.maximum({at.text} - {start}, 0), {size - 1})", at.axes)
        parts.append((start + size, _in_segment(w, s, idx[:axis] + (local,) + idx[axis + 1:],
                                                at, start if k else None, start + size)))
        start += size
    expr = parts[-1][1].text
    for end, v in reversed(parts[:-1]):
        expr = f"tl.where({at.text} < {end}, {v.text}, {expr})"
    axes = at.axes.union(*(v.axes for _, v in parts))
    return w.let(w.fresh(f"concat{i}"), expr, axes, i)


def _in_segment(w: KernelWriter, src: int, idx: tuple[Ix, ...], at: Ix, start: int | None,
                end: int) -> Ix:
    """A concat operand's value, its loads masked to the lanes whose index `at`
    falls in [start, end): each lane reads memory for one operand only (a flat
    concat of many gradients stays one load per element)."""
    if not at.axes:
        return w.value(src, idx)
    lo = "" if start is None else f"({at.text} >= {start}) & "
    saved = w.extra_mask
    w.extra_mask = " & ".join(filter(None, [saved, f"{lo}({at.text} < {end})"]))
    try:
        return w.value(src, idx)
    finally:
        w.extra_mask = saved


def _pad(w: KernelWriter, i: int, n: Node, idx: tuple[Ix, ...]) -> Ix:
    """Zeros around and between the source's elements: the source index is
    (k - low) / (interior + 1) where that is whole and in range, and the load
    uses a clamped index so a padding lane never addresses outside the buffer."""
    src_idx, checks = [], []
    parts = zip(idx, w.shape(n.srcs[0]), n.attrs["lows"], n.attrs["highs"], n.attrs["interiors"])
    for k, size, lo, hi, mid in parts:
        if (lo, hi, mid) == (0, 0, 0):
            src_idx.append(k)
            continue
        shift = f" - {lo}" if lo > 0 else f" + {-lo}" if lo < 0 else ""
        pos = w.let(w.fresh(f"pad{i}"), f"{ix.wrap(k.text)}{shift}", k.axes)
        at = pos
        if lo > 0:
            checks.append(f"({pos.text} >= 0)")
        if mid:
            checks.append(f"({pos.text} % {mid + 1} == 0)")
            at = w.let(w.fresh(f"pad{i}"), f"{pos.text} // {mid + 1}", k.axes)
        if hi > 0 or mid:
            checks.append(f"({at.text} < {size})")
        src_idx.append(Ix(f"tl.minimum(tl.maximum({at.text}, 0), {size - 1})", k.axes)
                       if checks else at)
    v = w.value(n.srcs[0], tuple(src_idx))
    if not checks:
        return v
    zero = "0.0" if w.dtype(i).is_float else "0"
    axes = v.axes.union(*(k.axes for k in idx))
    return w.let(w.fresh(f"pad{i}"), f"tl.where({' & '.join(checks)}, {v.text}, {zero})", axes, i)


def _flip(w: KernelWriter, i: int, n: Node, idx: tuple[Ix, ...]) -> Ix:
    shape = w.shape(i)
    src_idx = tuple(Ix(f"{ix.dim_text(shape[a])} - 1 - {ix.wrap(k.text)}", k.axes)
                    if a in n.attrs["axes"] and shape[a] != 1 else k
                    for a, k in enumerate(idx))
    return w.value(n.srcs[0], src_idx)


def _dim(w: KernelWriter, i: int, n: Node, idx: tuple[Ix, ...]) -> Ix:
    return w.let(w.fresh(f"dim{i}"), f"tl.full([], {ix.dim_text(n.attrs['dim'])}, tl.int32)",
                 frozenset(), i)


def _scalar_input(w: KernelWriter, i: int, n: Node, idx: tuple[Ix, ...]) -> Ix:
    name = sanitize(n.attrs["name"])
    w.scalars[name] = w.counters[i]
    return Ix(name)


VIEW_RULES = {
    Op.CONST: _const, Op.FULL: _const, Op.IOTA: _iota, Op.RAND: _rand,
    Op.RESHAPE: _reshape, Op.PERMUTE: _permute, Op.EXPAND: _expand, Op.SLICE: _slice,
    Op.INDEX: _index, Op.GATHER: _gather, Op.CONCAT: _concat, Op.INPUT: _scalar_input,
    Op.PAD: _pad, Op.FLIP: _flip, Op.DIM: _dim,
}
