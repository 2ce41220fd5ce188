"""Kernel templates: the loop structure of each kind of kernel.

Each template sets up the program's tile (program ids, offsets, per-axis
masks), registers the anchor's value (a matmul accumulator, a reduction), and
stores the kernel's outputs; everything else comes from KernelWriter.value.
It returns the launch description: grid and block-size expressions in terms of
the launcher's variables.
"""

from __future__ import annotations

from dataclasses import dataclass

from ember.ir import dims
from ember.ir.dims import Shape
from ember.ir.dtypes import DType
from ember.ir.ops import REDUCE, Op

from . import ix
from .ix import Ix, dim_text
from .rules import TL_DTYPE
from .writer import KernelWriter


@dataclass
class Launch:
    grid: list[str]                     # grid expressions (launcher scope)
    constexprs: dict[str, str]          # BLOCK_* -> expression (launcher scope)
    num_warps: str = "4"                # expression (launcher scope)


def _name_index(w: KernelWriter, idx: tuple[Ix, ...], names: list[str]) -> tuple[Ix, ...]:
    """Give each non-trivial index component a readable variable."""
    out = []
    for i, name in zip(idx, names):
        if i.text.replace("_", "").isalnum():
            out.append(i)
        else:
            out.append(w.let(name, i.text, i.axes))
    return tuple(out)


def _index_names(shape: Shape, prefix: str = "i") -> list[str]:
    return [f"{prefix}{k}" for k in range(len(shape))]


def store_outputs(w: KernelWriter, idx_for: dict[int, tuple[Ix, ...]],
                  offsets: dict[int, Ix] | None = None) -> None:
    for out in w.kernel.outputs:
        off = (offsets or {}).get(out)
        w.store(out, idx_for[out], w.value(out, idx_for[out]), off)


# ---- pointwise --------------------------------------------------------------------

def pointwise(w: KernelWriter) -> Launch:
    shape = w.shape(w.kernel.anchor)
    numel = dim_text(dims.prod(shape))
    w.line("pid = tl.program_id(0)")
    w.line("offs = pid * BLOCK + tl.arange(0, BLOCK)")
    w.line(f"mask = offs < {numel}")
    w.axes(x=("offs", "mask"))
    idx = _name_index(w, ix.delinear(Ix("offs", frozenset("x")), shape), _index_names(shape))
    store_outputs(w, {o: idx for o in w.kernel.outputs})
    return Launch([f"triton.cdiv({numel}, BLOCK)"], {"BLOCK": f"blocks.pointwise({numel})"})


# ---- reductions ------------------------------------------------------------------

IDENTITY = {Op.SUM: "0.0", Op.MEAN: "0.0", Op.MAX: '-float("inf")', Op.MIN: 'float("inf")',
            Op.ARGMAX: '-float("inf")'}
INT_LIMITS = {DType.I32: 2**31 - 1, DType.I64: 2**63 - 1, DType.BOOL: 1}


def identity(op: Op, dtype: DType) -> str:
    """The value masked lanes take in a reduction, in the operand's own dtype
    (a float identity would promote an integer reduction to float32)."""
    if dtype.is_float:
        return IDENTITY[op]
    top = INT_LIMITS[dtype]
    return {Op.SUM: "0", Op.MAX: str(-top - 1 if dtype.is_int else 0),
            Op.MIN: str(top), Op.ARGMAX: str(-top - 1 if dtype.is_int else 0)}[op]


def reduce(w: KernelWriter) -> Launch:
    full, axes = w.kernel.space
    kept = tuple(d for a, d in enumerate(full) if a not in axes)
    red = tuple(full[a] for a in axes)
    n_rows, n_r = dim_text(dims.prod(kept)), dim_text(dims.prod(red))
    w.line("pid = tl.program_id(0)")
    w.line("rows = pid * XBLOCK + tl.arange(0, XBLOCK)[:, None]")
    w.line(f"xmask = rows < {n_rows}")
    w.line("r = tl.arange(0, RBLOCK)[None, :]")
    w.line(f"rmask = r < {n_r}")
    w.line("mask = xmask & rmask")
    w.axes(x=("rows", "xmask"), r=("r", "rmask"))
    kept_idx = _name_index(w, ix.delinear(Ix("rows", frozenset("x")), kept),
                           [f"i{a}" for a in range(len(full)) if a not in axes])
    red_idx = _name_index(w, ix.delinear(Ix("r", frozenset("r")), red), [f"r{a}" for a in axes])
    it_k, it_r = iter(kept_idx), iter(red_idx)
    full_idx = tuple(next(it_r) if a in axes else next(it_k) for a in range(len(full)))
    keep_idx = tuple(ix.ZERO if a in axes else full_idx[a] for a in range(len(full)))
    spaces = {full: full_idx, tuple(1 if a in axes else d for a, d in enumerate(full)): keep_idx,
              kept: kept_idx}
    for i in w.kernel.nodes:
        n = w.g.nodes[i]
        if n.op in REDUCE:
            _reduction(w, i, full_idx, n_r)
            at = keep_idx if n.attrs["keepdims"] else kept_idx
            w.remember(i, at, Ix(f"red{i}", frozenset("x")))
    # a per-row result's offset is the row number itself (also for a scalar)
    per_row = {o: Ix("rows", frozenset("x")) for o in w.kernel.outputs if w.shape(o) != full}
    store_outputs(w, {o: spaces[w.shape(o)] for o in w.kernel.outputs}, per_row)
    return Launch([f"triton.cdiv({n_rows}, XBLOCK)"],
                  {"XBLOCK": f"blocks.reduce_rows({n_rows}, {n_r})",
                   "RBLOCK": f"blocks.reduce_cols({n_r})"})


def _reduction(w: KernelWriter, i: int, full_idx: tuple[Ix, ...], n_r: str) -> None:
    n = w.g.nodes[i]
    v = w.value(n.srcs[0], full_idx)
    dtype = w.dtype(n.srcs[0])
    masked = f"tl.where(mask, {v.text}, {identity(n.op, dtype)})"
    if n.op in (Op.SUM, Op.MEAN):
        expr = f"tl.sum({masked}, axis=1, keep_dims=True)"
        if n.op is Op.MEAN:
            expr = f"{expr} / {ix.wrap(n_r)}"
    elif n.op is Op.ARGMAX:
        expr = f"tl.argmax({masked}, axis=1, keep_dims=True)"
    else:
        expr = f"tl.{n.op.value}({masked}, axis=1, keep_dims=True)"
    w.line(f"red{i} = {expr}", i)
    if dtype.is_float and n.op in (Op.MAX, Op.MIN, Op.ARGMAX):
        _propagate_nan(w, i, v)


def _propagate_nan(w: KernelWriter, i: int, v: Ix) -> None:
    """tl.max/tl.argmax skip NaN; NumPy and torch return NaN (argmax: the
    index of the first NaN), which is what the oracle defines."""
    w.line(f"nan{i} = tl.where(mask, tl.where({v.text} != {v.text}, 1, 0), 0)")
    w.line(f"has_nan{i} = tl.max(nan{i}, axis=1, keep_dims=True) > 0")
    if w.g.nodes[i].op is Op.ARGMAX:
        first = f"tl.argmax(nan{i}, axis=1, keep_dims=True)"
        w.line(f"red{i} = tl.where(has_nan{i}, {first}, red{i})")
    else:
        w.line(f'red{i} = tl.where(has_nan{i}, float("nan"), red{i})')


# ---- matmul -----------------------------------------------------------------------------

def matmul(w: KernelWriter) -> Launch:
    m = w.kernel.anchor
    a, b = w.g.nodes[m].srcs
    out = w.shape(m)
    sa, sb = w.shape(a), w.shape(b)
    batch, M, N, K = out[:-2], out[-2], out[-1], sa[-1]
    fold = len(sb) == 2  # b has no batch dims: a's batch rows join M
    rows = dims.prod(batch + (M,)) if fold else M
    nb = "1" if fold else dim_text(dims.prod(batch))
    w.line("pid_m = tl.program_id(0)")
    w.line("pid_n = tl.program_id(1)")
    if not fold:
        w.line("pid_b = tl.program_id(2)")
    w.line("rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)[:, None]")
    w.line("rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)[None, :]")
    w.axes(m=("rm", f"(rm < {dim_text(rows)})"), n=("rn", f"(rn < {dim_text(N)})"))
    rm, rn = Ix("rm", frozenset("m")), Ix("rn", frozenset("n"))
    if fold:
        lead = _name_index(w, ix.delinear(rm, batch + (M,)), _index_names(batch + (M,), "b"))
        bidx, mi = lead[:-1], lead[-1]
    else:
        bidx = _name_index(w, ix.delinear(Ix("pid_b"), batch), _index_names(batch, "b"))
        mi = rm
    acc_t = TL_DTYPE[w.dtype(m)]
    w.line(f"acc = tl.zeros((BLOCK_M, BLOCK_N), dtype={acc_t})")
    w.line(f"for k0 in range(0, {dim_text(K)}, BLOCK_K):")
    w.push()
    w.line("ka = k0 + tl.arange(0, BLOCK_K)[None, :]")
    w.line("kb = k0 + tl.arange(0, BLOCK_K)[:, None]")
    w.axes(ka=("ka", f"(ka < {dim_text(K)})"), kb=("kb", f"(kb < {dim_text(K)})"))
    tile_a = ix.broadcast_index(bidx + (mi, Ix("ka", frozenset({"ka"}))), batch + (M, K), sa)
    tile_b = ix.broadcast_index(bidx + (Ix("kb", frozenset({"kb"})), rn), batch + (K, N), sb)
    va = operand(w, a, tile_a, {"m", "ka"})
    vb = operand(w, b, tile_b, {"kb", "n"})
    w.line(f"acc = tl.dot({va.text}, {vb.text}, acc{dot_precision(w, m)})", m)
    w.pop()
    out_idx = bidx + (mi, rn)
    w.remember(m, out_idx, Ix("acc", frozenset({"m", "n"})))
    store_outputs(w, {o: out_idx for o in w.kernel.outputs})
    R, Nt, Kt = dim_text(rows), dim_text(N), dim_text(K)
    return Launch([f"triton.cdiv({R}, BLOCK_M)", f"triton.cdiv({Nt}, BLOCK_N)", nb],
                  {"BLOCK_M": f"blocks.tile({R})", "BLOCK_N": f"blocks.tile({Nt})",
                   "BLOCK_K": f"blocks.tile_k({Kt})"})


def dot_precision(w: KernelWriter, m: int) -> str:
    return f', input_precision="{w.precision}"' if w.dtype(m).value == "f32" else ""


def operand(w: KernelWriter, i: int, idx: tuple[Ix, ...], axes: set[str]) -> Ix:
    """A dot operand tile: the value of node i over the tile, zero on padding."""
    v = w.value(i, idx)
    if v.text in w.loads and v.axes == frozenset(axes):
        return v  # a masked load of the whole tile is zero outside it already
    # computed values, and values constant along an axis (a size-1 K), must be
    # zero on the tile's padding lanes or tl.dot would sum them in
    text = f"tl.where({w.mask_for(frozenset(axes))}, {v.text}, 0.0)"
    return w.let(w.fresh(f"{w.names.get(i, 'op')}_tile"), text, frozenset(axes))
