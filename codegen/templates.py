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
from ember.ir.dims import Dim, Shape
from ember.ir.dtypes import DType
from ember.ir.ops import REDUCE, Op

from . import blocks, ix
from .ix import Ix, dim_text
from .rules import NAN, TL_DTYPE
from .writer import KernelWriter


@dataclass
class Launch:
    """How the launcher runs a kernel, as expressions in its scope. `values()`
    is the one expression for the constexprs, num_warps and num_stages in that
    order: the launcher unpacks it and the sm_90 check evaluates it."""

    grid: list[str]                     # grid expressions (launcher scope)
    constexprs: dict[str, str]          # BLOCK_* -> expression (launcher scope)
    num_warps: str = "4"                # expression (launcher scope)
    num_stages: str = "blocks.STAGES"   # expression (launcher scope)
    config: str = ""                    # a blocks.Config call deciding all of them

    def values(self) -> str:
        if self.config:
            return self.config
        return ", ".join([*self.constexprs.values(), self.num_warps, self.num_stages])


DOT_CONSTEXPRS = ("BLOCK_M", "BLOCK_N", "BLOCK_K", "GROUP_M")


def dot_launch(grid: list[str], config: str) -> Launch:
    """The launch of a dot kernel, whose blocks.Config decides everything."""
    fields = [f.lower() for f in DOT_CONSTEXPRS]
    return Launch(grid, {c: f"{config}.{f}" for c, f in zip(DOT_CONSTEXPRS, fields)},
                  f"{config}.num_warps", f"{config}.num_stages", config)


def grouped_tiles(w: KernelWriter, rows: str, cols: str) -> None:
    """pid_m, pid_n of a dot kernel on a 1-D grid of tiles (program_id 0):
    GROUP_M row tiles at a time sweep the columns together, so the B tiles
    they share are still in L2 (Triton's matmul tutorial)."""
    w.line("pid = tl.program_id(0)")
    w.line(f"tiles_n = tl.cdiv({cols}, BLOCK_N)")
    w.line("first_m = pid // (GROUP_M * tiles_n) * GROUP_M")
    w.line(f"group_m = tl.minimum(tl.cdiv({rows}, BLOCK_M) - first_m, GROUP_M)")
    w.line("pid_m = first_m + pid % group_m")
    w.line("pid_n = pid % (GROUP_M * tiles_n) // group_m")


def tile_count(rows: str, cols: str) -> str:
    """The grid's first axis for grouped_tiles."""
    return f"triton.cdiv({rows}, BLOCK_M) * triton.cdiv({cols}, BLOCK_N)"


def dot_options(w: KernelWriter, a: int) -> str:
    """The launcher's options to blocks.matmul for a dot on operand `a`:
    `mma=True` where it runs on tensor cores (tf32 or 16-bit operands), and
    the operand's size when it is not 4 bytes."""
    size = w.dtype(a).itemsize
    mma = size <= 2 or (size == 4 and w.precision != "ieee")
    return ("" if size == 4 else f", itemsize={size}") + (", mma=True" if mma else "")


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
    for out, idx in idx_for.items():
        n = w.g.nodes[out]
        if n.op is Op.PERMUTE and n.srcs[0] in w.kernel.nodes:  # stored permuted
            idx = tuple(idx[p] for p in n.attrs["perm"])
        w.store(out, idx, w.value(out, idx), (offsets or {}).get(out))


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
#
# A reduction kernel's tile is [XBLOCK rows, RBLOCK lanes of the reduced extent].
# A row that fits (blocks.reduce_looped says no) is *persistent*: one block holds
# it, every value is computed once, and later reductions and the stored epilogue
# reuse it from registers. A longer row is *looped*: each pass walks the row in
# RBLOCK chunks with running accumulators per lane, a reduction that reads
# another's result runs one pass later (softmax: max, then the exp-sum, then a
# last pass storing the normalized row), and lanes are combined after the loop.

IDENTITY = {Op.SUM: "0.0", Op.MEAN: "0.0", Op.MAX: '-float("inf")', Op.MIN: 'float("inf")',
            Op.ARGMAX: '-float("inf")'}
INT_LIMITS = {DType.I32: 2**31 - 1, DType.I64: 2**63 - 1, DType.BOOL: 1}
NAN_OPS = (Op.MAX, Op.MIN, Op.ARGMAX)   # NaN wins, as in NumPy; tl.max/tl.argmax skip it


def identity(op: Op, dtype: DType) -> str:
    """The value masked lanes take in a reduction, in the operand's own dtype
    (a float identity would promote an integer reduction to float32)."""
    if dtype.is_float:
        return IDENTITY[op]
    top = INT_LIMITS[dtype]
    return {Op.SUM: "0", Op.MAX: str(-top - 1 if dtype.is_int else 0),
            Op.MIN: str(top), Op.ARGMAX: str(-top - 1 if dtype.is_int else 0)}[op]


@dataclass
class _Rows:
    """The iteration space: rows are the kept dims (tile axis x), and the
    reduced dims flatten into one extent of n_r elements (tile axis r)."""

    full: Shape
    axes: tuple[int, ...]
    n_r: str
    kept_idx: tuple[Ix, ...]
    keep_idx: tuple[Ix, ...]     # the keepdims index: 0 on the reduced axes

    def full_index(self, w: KernelWriter) -> tuple[Ix, ...]:
        """The full-shape index at the current lanes `r` (naming the reduced dims)."""
        red = tuple(self.full[a] for a in self.axes)
        red_idx = _name_index(w, ix.delinear(Ix("r", frozenset("r")), red),
                              [f"r{a}" for a in self.axes])
        it_k, it_r = iter(self.kept_idx), iter(red_idx)
        return tuple(next(it_r) if a in self.axes else next(it_k) for a in range(len(self.full)))

    def row_index(self, shape: Shape) -> tuple[Ix, ...]:
        """The index of a per-row value: the keepdims shape or the kept shape."""
        return self.keep_idx if len(shape) == len(self.full) else self.kept_idx


def reduce(w: KernelWriter) -> Launch:
    """A row reduction kernel, persistent or looped as blocks.reduce_looped
    decides: at code generation for a static row length, else at launch
    through the LOOPED constexpr, which compiles only the branch it selects."""
    full, axes = w.kernel.space
    kept = tuple(d for a, d in enumerate(full) if a not in axes)
    n_r = dims.prod(tuple(full[a] for a in axes))
    n_rows = dim_text(dims.prod(kept))
    w.used.add("roff")
    w.line("pid = tl.program_id(0)")
    w.line("rows = pid * XBLOCK + tl.arange(0, XBLOCK)[:, None]")
    w.line(f"xmask = rows < {n_rows}")
    w.axes(x=("rows", "xmask"), r=("r", "rmask"))
    kept_idx = _name_index(w, ix.delinear(Ix("rows", frozenset("x")), kept),
                           [f"i{a}" for a in range(len(full)) if a not in axes])
    it = iter(kept_idx)
    keep_idx = tuple(ix.ZERO if a in axes else next(it) for a in range(len(full)))
    rs = _Rows(full, axes, dim_text(n_r), kept_idx, keep_idx)
    size, inner = _itemsize(w), all(d == 1 for d in full[max(axes, default=len(full)) + 1:])
    opts = ("" if size == 4 else f", itemsize={size}") + ("" if inner else ", inner=False")
    consts = {"XBLOCK": f"blocks.reduce_rows({n_rows}, {rs.n_r}{opts})",
              "RBLOCK": f"blocks.reduce_cols({rs.n_r}{opts})"}
    if isinstance(n_r, int):
        (_looped if blocks.reduce_looped(n_r, size) else _persistent)(w, rs)
    else:
        consts["LOOPED"] = f"blocks.reduce_looped({rs.n_r}, {size})"
        _either(w, rs)
    return Launch([f"triton.cdiv({n_rows}, XBLOCK)"], consts)


def _itemsize(w: KernelWriter) -> int:
    """Register bytes per element of the widest value the kernel computes or
    reduces (a bool takes a whole 32-bit register too)."""
    g = w.g
    operands = [g.nodes[i].srcs[0] for i in w.kernel.nodes if g.nodes[i].op in REDUCE]
    return max(4, *(w.dtype(i).itemsize for i in [*w.kernel.nodes, *operands]))


def _either(w: KernelWriter, rs: _Rows) -> None:
    """Both forms under `if LOOPED:`; a branch's locals never reach the other,
    so the second branch may reuse the first one's names."""
    before, taken = set(w.used), set()
    for head, form in (("if LOOPED:", _looped), ("else:", _persistent)):
        w.used.intersection_update(before)   # the other branch's names are free again
        w.line(head)
        w.push()
        form(w, rs)
        w.pop()
        taken |= w.used
    w.used |= taken


def _reductions(w: KernelWriter) -> list[int]:
    return [i for i in w.kernel.nodes if w.g.nodes[i].op in REDUCE]


def _lanes(w: KernelWriter, rs: _Rows) -> tuple[Ix, ...]:
    """Masks of the current lanes `r`; returns the full-shape index there."""
    w.line(f"rmask = r < {rs.n_r}")
    w.line("mask = xmask & rmask")
    return rs.full_index(w)


def _store(w: KernelWriter, rs: _Rows, outs: list[int], full_idx: tuple[Ix, ...] = ()) -> None:
    """Store full-shape outputs at full_idx, per-row ones at the row number
    (also for a scalar)."""
    for o in outs:
        if w.shape(o) == rs.full:
            w.store(o, full_idx, w.value(o, full_idx))
        else:
            idx = rs.row_index(w.shape(o))
            w.store(o, idx, w.value(o, idx), Ix("rows", frozenset("x")))


# ---- persistent: the whole row in one block -------------------------------------------

def _persistent(w: KernelWriter, rs: _Rows) -> None:
    w.line("r = tl.arange(0, RBLOCK)[None, :]")
    full_idx = _lanes(w, rs)
    for i in _reductions(w):
        red = _reduce_block(w, i, full_idx, rs.n_r)
        w.remember(i, rs.row_index(w.shape(i)), red)
    _store(w, rs, w.kernel.outputs, full_idx)


def _reduce_block(w: KernelWriter, i: int, full_idx: tuple[Ix, ...], n_r: str) -> Ix:
    n = w.g.nodes[i]
    v = _as_tile(w, w.value(n.srcs[0], full_idx))
    dtype = w.dtype(n.srcs[0])
    nan = dtype.is_float and n.op in NAN_OPS
    # NaN lanes are left out (an all-NaN tile would make tl.argmax raise in the
    # interpreter) and put back by _propagate_nan
    keep = f"mask & ({v.text} == {v.text})" if nan else "mask"
    fn = "sum" if n.op in (Op.SUM, Op.MEAN) else n.op.value
    expr = f"tl.{fn}(tl.where({keep}, {v.text}, {identity(n.op, dtype)}), axis=1, keep_dims=True)"
    if n.op is Op.MEAN:
        expr = f"{expr} / {ix.wrap(n_r)}"
    red = w.let(w.fresh(f"red{i}"), expr, frozenset("x"), i)
    if nan:
        _propagate_nan(w, i, v, red)
    return red


def _as_tile(w: KernelWriter, v: Ix) -> Ix:
    """A value constant over the tile (a one-element row) as a tile: the
    interpreter rejects a scalar operand of `&` beside the block masks."""
    if v.axes:
        return v
    return w.let(w.fresh("tile"), f"tl.where(mask, {v.text}, {v.text})", frozenset({"x", "r"}))


def _propagate_nan(w: KernelWriter, i: int, v: Ix, red: Ix) -> None:
    """NaN wins as in NumPy and torch (argmax: the index of the first NaN),
    which is what the oracle defines."""
    nan = w.fresh(f"nan{i}")
    w.line(f"{nan} = tl.where(mask & ({v.text} != {v.text}), 1, 0)")
    has_nan = f"tl.max({nan}, axis=1, keep_dims=True) > 0"
    if w.g.nodes[i].op is Op.ARGMAX:
        w.line(f"{red} = tl.where({has_nan}, tl.argmax({nan}, axis=1, keep_dims=True), {red})")
    else:
        w.line(f'{red} = tl.where({has_nan}, float("nan"), {red})')


# ---- looped: passes over RBLOCK chunks ----------------------------------------------

def _looped(w: KernelWriter, rs: _Rows) -> None:
    for group in _passes(w):
        accs = {i: _acc_init(w, i, rs.n_r) for i in group}
        full_idx = _chunk_loop(w, rs)
        for i in group:
            _acc_update(w, i, accs[i], _as_tile(w, w.value(w.g.nodes[i].srcs[0], full_idx)),
                        rs.n_r)
        w.pop()
        for i in group:
            w.remember(i, rs.row_index(w.shape(i)), _acc_finish(w, i, accs[i], rs.n_r))
    full_outs = [o for o in w.kernel.outputs if w.shape(o) == rs.full]
    if full_outs:  # the epilogue: one more pass storing the full-shape values
        _store(w, rs, full_outs, _chunk_loop(w, rs))
        w.pop()
    _store(w, rs, [o for o in w.kernel.outputs if o not in full_outs])


def _passes(w: KernelWriter) -> list[list[int]]:
    """The reductions grouped by pass: one whose operand reads another
    reduction's result (through any chain of computed values) runs a pass later."""
    reductions = _reductions(w)
    finished: dict[int, int] = {}   # node -> passes that must end before it has a value
    for i in sorted(_upstream(w, reductions)):   # node order is topological
        srcs = () if w.is_buffer(i) else w.g.nodes[i].srcs
        finished[i] = max((finished[s] for s in srcs), default=0) + (i in reductions)
    groups: list[list[int]] = [[] for _ in range(max(finished[i] for i in reductions))]
    for i in reductions:
        groups[finished[i] - 1].append(i)
    return groups


def _upstream(w: KernelWriter, roots: list[int]) -> set[int]:
    """The nodes this kernel computes (or folds as views) to get the roots,
    and the buffers it reads them from."""
    seen: set[int] = set()
    todo = list(roots)
    while todo:
        i = todo.pop()
        if i not in seen:
            seen.add(i)
            todo += () if w.is_buffer(i) else w.g.nodes[i].srcs
    return seen


def _chunk_loop(w: KernelWriter, rs: _Rows) -> tuple[Ix, ...]:
    """Open a loop over the row's chunks (the caller pops it); returns the
    full-shape index at the chunk's lanes."""
    w.line(f"for roff in range(0, {rs.n_r}, RBLOCK):")
    w.push()
    w.line("r = roff + tl.arange(0, RBLOCK)[None, :]")
    return _lanes(w, rs)


def _acc_init(w: KernelWriter, i: int, n_r: str) -> list[str]:
    """Per-lane accumulators of reduction i: the running value; for argmax
    also its index and the index of the first NaN (n_r: none yet)."""
    n = w.g.nodes[i]
    dtype = w.dtype(n.srcs[0])
    acc_t = TL_DTYPE[DType.I32 if dtype is DType.BOOL else dtype]
    names = [w.fresh(f"acc_{n.op.value}")]
    w.line(f"{names[0]} = tl.full([XBLOCK, RBLOCK], {identity(n.op, dtype)}, {acc_t})")
    if n.op is Op.ARGMAX:
        names.append(w.fresh("at_argmax"))
        w.line(f"{names[1]} = tl.zeros([XBLOCK, RBLOCK], tl.int32)")
        if dtype.is_float:
            names.append(w.fresh("nan_at_argmax"))
            w.line(f"{names[2]} = tl.full([XBLOCK, RBLOCK], {n_r}, tl.int32)")
    return names


def _acc_update(w: KernelWriter, i: int, acc: list[str], v: Ix, n_r: str) -> None:
    """Fold one chunk into the accumulators. A lane's later chunks hold later
    indices, so argmax keeps a lane's first maximum by taking strictly greater
    values only."""
    n = w.g.nodes[i]
    dtype = w.dtype(n.srcs[0])
    ident, a = identity(n.op, dtype), acc[0]
    if n.op in (Op.SUM, Op.MEAN):
        w.line(f"{a} += tl.where(mask, {v.text}, {ident})", i)
    elif n.op is not Op.ARGMAX:
        nan = f", {NAN}" if dtype.is_float else ""   # the lane remembers a NaN
        fn = "maximum" if n.op is Op.MAX else "minimum"
        w.line(f"{a} = tl.{fn}({a}, tl.where(mask, {v.text}, {ident}){nan})", i)
    else:
        keep = f"mask & ({v.text} == {v.text})" if dtype.is_float else "mask"
        cand = w.let(w.fresh("cand"), f"tl.where({keep}, {v.text}, {ident})", v.axes)
        take = w.let(w.fresh("take"), f"{cand.text} > {a}", v.axes)
        w.line(f"{acc[1]} = tl.where({take.text}, r, {acc[1]})")
        w.line(f"{a} = tl.where({take.text}, {cand.text}, {a})", i)
        if dtype.is_float:
            w.line(f"{acc[2]} = tl.minimum({acc[2]}, tl.where(mask & ({v.text} != {v.text}), "
                   f"r, {n_r}))")


def _acc_finish(w: KernelWriter, i: int, acc: list[str], n_r: str) -> Ix:
    """Combine the lanes into the row's result."""
    n = w.g.nodes[i]
    dtype = w.dtype(n.srcs[0])
    red, a = w.fresh(f"red{i}"), acc[0]
    if n.op in (Op.SUM, Op.MEAN):
        mean = f" / {ix.wrap(n_r)}" if n.op is Op.MEAN else ""
        w.line(f"{red} = tl.sum({a}, axis=1, keep_dims=True){mean}", i)
    elif n.op is not Op.ARGMAX:
        finite = f"tl.where({a} == {a}, {a}, {identity(n.op, dtype)})" if dtype.is_float else a
        w.line(f"{red} = tl.{n.op.value}({finite}, axis=1, keep_dims=True)", i)
        if dtype.is_float:
            has_nan = f"tl.max(tl.where({a} != {a}, 1, 0), axis=1, keep_dims=True) > 0"
            w.line(f'{red} = tl.where({has_nan}, float("nan"), {red})')
    else:
        best = w.let(w.fresh("best"), f"tl.max({a}, axis=1, keep_dims=True)", frozenset("x"))
        w.line(f"{red} = tl.min(tl.where({a} == {best.text}, {acc[1]}, {n_r}), axis=1, "
               f"keep_dims=True)", i)
        if dtype.is_float:
            first = w.let(w.fresh("first_nan"), f"tl.min({acc[2]}, axis=1, keep_dims=True)",
                          frozenset("x"))
            w.line(f"{red} = tl.where({first.text} < {n_r}, {first.text}, {red})")
    return Ix(red, frozenset("x"))


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
    R, Nt, Kt = dim_text(rows), dim_text(N), dim_text(K)
    grouped_tiles(w, R, Nt)
    if not fold:
        w.line("pid_b = tl.program_id(1)")
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
    if a in w.kernel.outputs:
        # (a tensor, not the scalar `pid_n == 0`: the interpreter rejects a
        # scalar operand of `&` in a mask)
        w.line("stores_a = (tl.zeros((BLOCK_M, 1), dtype=tl.int32) + pid_n) == 0")
    colsum_start(w, acc_t)
    w.line(f"acc = tl.zeros((BLOCK_M, BLOCK_N), dtype={acc_t})")
    w.line(f"for k0 in range(0, {dim_text(K)}, BLOCK_K):")
    w.push()
    w.line("ka = k0 + tl.arange(0, BLOCK_K)[None, :]")
    w.line("kb = k0 + tl.arange(0, BLOCK_K)[:, None]")
    w.axes(ka=("ka", f"(ka < {dim_text(K)})"), kb=("kb", f"(kb < {dim_text(K)})"))
    tile_a = ix.broadcast_index(bidx + (mi, Ix("ka", frozenset({"ka"}))), batch + (M, K), sa)
    tile_b = ix.broadcast_index(bidx + (Ix("kb", frozenset({"kb"})), rn), batch + (K, N), sb)
    va = operand(w, a, tile_a, {"m", "ka"})
    if a in w.kernel.outputs:  # a prologue: the first column of programs stores A
        w.extra_mask = "stores_a"
        w.store(a, tile_a, va)
        w.extra_mask = ""
    vb = operand(w, b, tile_b, {"kb", "n"})
    w.line(f"acc = tl.dot({va.text}, {vb.text}, acc{dot_precision(w, m)})", m)
    colsum = colsum_add(w, vb)
    w.pop()
    out_idx = bidx + (mi, rn)
    w.remember(m, out_idx, Ix("acc", frozenset({"m", "n"})))
    colsum_store(w, rn)
    per_row = _row_reductions(w, out_idx, N)
    store_outputs(w, {o: per_row.get(w.shape(o), out_idx) for o in w.kernel.outputs
                      if o not in (a, colsum)})
    config = f"blocks.matmul({R}, {Nt}, {Kt}{dot_options(w, a)})"
    return dot_launch([tile_count(R, Nt), nb], config)


def colsum_start(w: KernelWriter, acc_t: str) -> None:
    """A bias gradient fused into its weight gradient's GEMM: the column sums
    of the [K, N] operand, accumulated over the K loop (passes/fuse.py)."""
    if "colsum" in w.kernel.info:
        w.line(f"colsum = tl.zeros((1, BLOCK_N), dtype={acc_t})")
        w.line("stores_colsum = (tl.zeros((1, BLOCK_N), dtype=tl.int32) + pid_m) == 0")


def colsum_add(w: KernelWriter, vb: Ix) -> int | None:
    colsum = w.kernel.info.get("colsum")
    if colsum is not None:
        w.line(f"colsum += tl.sum({vb.text}, axis=0, keep_dims=True)", colsum)
    return colsum


def colsum_store(w: KernelWriter, col: Ix) -> None:
    """The first row of programs stores the column sums."""
    if "colsum" in w.kernel.info:
        w.extra_mask = "stores_colsum"
        w.store(w.kernel.info["colsum"], (col,), Ix("colsum", frozenset("n")))
        w.extra_mask = ""


def _row_reductions(w: KernelWriter, out_idx: tuple[Ix, ...],
                    N: Dim) -> dict[Shape, tuple[Ix, ...]]:
    """Reductions over the output's rows, all in this program's tile (fusion
    allows them only when a row fits one tile); returns the indices of the
    per-row shapes."""
    rows = [i for i in sorted(w.kernel.nodes) if w.g.nodes[i].op in REDUCE]
    if not rows:
        return {}
    M = w.shape(w.kernel.anchor)[0]
    w.line(f"mask = {w.mask_for(frozenset({'m', 'n'}))}")
    mi = out_idx[0]
    for i in rows:
        red = _reduce_block(w, i, out_idx, dim_text(N))
        at = (mi, ix.ZERO) if w.g.nodes[i].attrs["keepdims"] else (mi,)
        w.remember(i, at, Ix(red.text, frozenset("m")))
    return {(M, 1): (mi, ix.ZERO), (M,): (mi,)}


def dot_precision(w: KernelWriter, m: int) -> str:
    """input_precision for a dot on fp32 operands (m: the dot op or an operand);
    bf16/f16 operands (--precision bf16-mixed) take none, as f64 ones."""
    n = w.g.nodes[m]
    operand = n.srcs[0] if n.op in (Op.MATMUL, Op.CONV2D) else m
    return f', input_precision="{w.precision}"' if w.dtype(operand) is DType.F32 else ""


def operand(w: KernelWriter, i: int, idx: tuple[Ix, ...], axes: set[str]) -> Ix:
    """A dot operand tile: the value of node i over the tile, zero on padding."""
    v = w.value(i, idx)
    if v.text in w.loads and v.axes == frozenset(axes):
        return v  # a masked load of the whole tile is zero outside it already
    # computed values, and values constant along an axis (a size-1 K), must be
    # zero on the tile's padding lanes or tl.dot would sum them in
    text = f"tl.where({w.mask_for(frozenset(axes))}, {v.text}, 0.0)"
    return w.let(w.fresh(f"{w.names.get(i, 'op')}_tile"), text, frozenset(axes))
