"""Templates for the attention op (flash attention) and the gates pattern (LSTM).

attention: one program owns BLOCK_M query rows of one (batch, head); keys and
  values stream through in BLOCK_N tiles with an online softmax in fp32
  (running max m_i, running sum l_i, rescaled accumulator), so the T x T
  scores live only in registers. The op's score region (scale, masks, bias) is
  written into the key loop by a KernelWriter over the region graph
  (ScoreRegion, shared with the backward kernels of codegen/flash_bwd.py).
  Causal masks skip key tiles past the block's last row. The natural-log
  log-sum-exp of each row, the op's second result, is stored where a node
  reads it (the backward). The head dim is padded to a power of two and masked.
gates: one program owns a [BLOCK_M, BLOCK_N] tile of every slice (gate); each
  K step loads an input tile once and multiplies it into one accumulator per
  gate; the slices' readers (the cell update) run as the epilogue.
"""

from __future__ import annotations

from dataclasses import dataclass

from ember.ir import dims
from ember.ir.dims import Dim, Shape
from ember.ir.graph import Graph
from ember.ir.ops import Op
from ember.passes.fuse import Kernel, Plan

from . import ix
from .ix import Ix, dim_text
from .templates import (
    Launch,
    _index_names,
    _name_index,
    dot_launch,
    dot_options,
    dot_precision,
    grouped_tiles,
    operand,
    store_outputs,
    tile_count,
)
from .writer import KernelWriter


@dataclass(frozen=True)
class AttentionOp:
    """What the attention templates need from an attention(_grad) node."""

    node: int
    q: int
    k: int
    v: int
    captured: tuple[int, ...]
    body: Graph         # the score region
    batch: Shape
    T: Dim              # queries
    TK: Dim             # keys
    D: Dim              # value head dim
    DK: Dim             # query/key head dim
    causal: bool


def describe(w: KernelWriter) -> AttentionOp:
    i = w.kernel.anchor
    n = w.g.nodes[i]
    q, k, v, *rest = n.srcs
    captured = rest if n.op is Op.ATTENTION else rest[3:]
    qs, ks, vs = (w.shape(x) for x in (q, k, v))
    return AttentionOp(i, q, k, v, tuple(captured), n.attrs["body"], qs[:-2], qs[-2], ks[-2],
                       vs[-1], qs[-1], n.attrs["causal"])


class ScoreRegion:
    """The score region at one score-tile index: a KernelWriter over the region
    graph that writes into w's kernel. Its first input is bound to the score
    tile the template holds (the backward binds the second, the logits'
    cotangent, once it has it); the captured operands are w's values there."""

    def __init__(self, w: KernelWriter, a: AttentionOp, at: tuple[Ix, ...]) -> None:
        body = self.body = a.body
        self.at, self.score = at, body.nodes[body.inputs[0]].tensor.shape
        nodes = list(range(len(body.nodes)))
        plan = Plan(body, [Kernel("region", body.outputs[0], nodes)], dict.fromkeys(nodes, 0),
                    {}, [])
        self.sub = KernelWriter(plan, plan.kernels[0], {}, w.precision, lines=w.lines,
                                depth=w.depth, masks=w.masks, axis_vars=w.axis_vars,
                                used=w.used, sites=w.sites)
        first = len(body.inputs) - len(a.captured)
        for i, c in zip(body.inputs[first:], a.captured):
            self.bind(i, w.value(c, ix.broadcast_index(at, self.score, w.shape(c))))

    def bind(self, i: int, v: Ix) -> None:
        """Region input node i has the value v."""
        shape = self.body.nodes[i].tensor.shape
        self.sub.remember(i, ix.broadcast_index(self.at, self.score, shape), v)

    def result(self, k: int, *tiles: Ix) -> Ix:
        """The region's k-th result, its leading inputs bound to `tiles`."""
        for i, v in zip(self.body.inputs, tiles):
            self.bind(i, v)
        return self.sub.value(self.body.outputs[k], self.at)


def float_type(w: KernelWriter, a: AttentionOp) -> str:
    return "tl.float64" if w.dtype(a.q).value == "f64" else "tl.float32"


def head_axes(w: KernelWriter, a: AttentionOp) -> None:
    """Tile axes over the head dims: q (DK along columns), dk (DK along rows)
    and d (D along columns)."""
    w.line("rq = tl.arange(0, BLOCK_DK)[None, :]")
    w.line("rdk = tl.arange(0, BLOCK_DK)[:, None]")
    w.line("rd = tl.arange(0, BLOCK_D)[None, :]")
    DKt, Dt = dim_text(a.DK), dim_text(a.D)
    w.axes(q=("rq", f"(rq < {DKt})"), dk=("rdk", f"(rdk < {DKt})"), d=("rd", f"(rd < {Dt})"))


def batch_index(w: KernelWriter, a: AttentionOp) -> tuple[Ix, ...]:
    w.line("pid_b = tl.program_id(1)")
    return _name_index(w, ix.delinear(Ix("pid_b"), a.batch), _index_names(a.batch, "b"))


def tile(w: KernelWriter, i: int, at: tuple[Ix, ...]) -> Ix:
    """A dot operand: node i at (batch..., row, col), over the tile axes of at."""
    return operand(w, i, at, set().union(*(x.axes for x in at)))


def head_text(a: AttentionOp) -> str:
    """The larger head dim, as launcher text."""
    return dim_text(a.D) if a.D == a.DK else f"max({dim_text(a.DK)}, {dim_text(a.D)})"


def launch(a: AttentionOp, over: Dim, block: str, rows: str = "", cols: str = "",
           warps: str = "") -> Launch:
    """Grid (cdiv(over, block), batch), block sizes and warps of an attention
    kernel: BLOCK_M query rows and BLOCK_N keys (the forward's unless given)."""
    return Launch([f"triton.cdiv({dim_text(over)}, {block})", dim_text(dims.prod(a.batch))],
                  {"BLOCK_M": rows or f"blocks.attention_rows({dim_text(a.T)})",
                   "BLOCK_N": cols or f"blocks.attention_cols({dim_text(a.TK)})",
                   "BLOCK_DK": f"blocks.head_dim({dim_text(a.DK)})",
                   "BLOCK_D": f"blocks.head_dim({dim_text(a.D)})"},
                  num_warps=warps or f"blocks.attention_warps({head_text(a)})")


def reads(w: KernelWriter, index: int) -> bool:
    """Is the op's result `index` read (by a GET in this kernel)?"""
    return any(w.g.nodes[u].op is Op.GET and w.g.nodes[u].attrs["index"] == index
               for u in w.kernel.nodes)


def store_gets(w: KernelWriter, at: dict[int, tuple[Ix, tuple[Ix, ...]]]) -> None:
    """Store the kernel's results: `at` maps a GET index to (its value, its index)."""
    idx = {}
    for u in w.kernel.nodes:
        n = w.g.nodes[u]
        if n.op is Op.GET:
            v, idx[u] = at[n.attrs["index"]]
            w.remember(u, idx[u], v)
    # an epilogue of o (only the forward has one) is stored at o's index
    store_outputs(w, {o: idx[o] if o in idx else at[0][1] for o in w.kernel.outputs})


# ---- forward ---------------------------------------------------------------------

def attention(w: KernelWriter) -> Launch:
    a = describe(w)
    bidx, q_tile = _attention_setup(w, a)
    _key_loop(w, a, bidx, q_tile)
    _attention_epilogue(w, a, bidx)
    return launch(a, a.T, "BLOCK_M")


def _attention_setup(w: KernelWriter, a: AttentionOp) -> tuple[tuple[Ix, ...], Ix]:
    """Program ids, the query tile, and the running softmax state. Causal
    query blocks run longest first (the last block reads every key): the
    long programs start early instead of leaving a tail."""
    if a.causal:
        w.line("pid_m = tl.num_programs(0) - 1 - tl.program_id(0)  # longest first")
    else:
        w.line("pid_m = tl.program_id(0)")
    bidx = batch_index(w, a)
    w.line("rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)[:, None]")
    w.axes(m=("rm", f"(rm < {dim_text(a.T)})"))
    head_axes(w, a)
    q_tile = tile(w, a.q, bidx + (Ix("rm", frozenset("m")), Ix("rq", frozenset("q"))))
    f = float_type(w, a)
    w.line(f"m_i = tl.full((BLOCK_M, 1), -float(\"inf\"), dtype={f})")
    w.line(f"l_i = tl.zeros((BLOCK_M, 1), dtype={f})")
    w.line(f"acc = tl.zeros((BLOCK_M, BLOCK_D), dtype={f})")
    if a.causal:
        w.line(f"hi = tl.minimum((pid_m + 1) * BLOCK_M, {dim_text(a.TK)})"
               f"  # later keys are all masked")
    else:
        w.line(f"hi = {dim_text(a.TK)}")
    return bidx, q_tile


def _key_loop(w: KernelWriter, a: AttentionOp, bidx: tuple[Ix, ...], q_tile: Ix) -> None:
    """Stream key/value tiles through the online softmax."""
    TKt = dim_text(a.TK)
    w.line("for start in range(0, hi, BLOCK_N):")
    w.push()
    w.line("rn = start + tl.arange(0, BLOCK_N)[None, :]")
    w.line("rnk = start + tl.arange(0, BLOCK_N)[:, None]")
    w.axes(n=("rn", f"(rn < {TKt})"), nk=("rnk", f"(rnk < {TKt})"))
    rm, rn = Ix("rm", frozenset("m")), Ix("rn", frozenset("n"))
    k_tile = tile(w, a.k, bidx + (rn, Ix("rdk", frozenset({"dk"}))))
    w.line(f"qk = tl.dot({q_tile.text}, {k_tile.text}{dot_precision(w, a.q)})", a.node)
    x = ScoreRegion(w, a, bidx + (rm, rn)).result(0, Ix("qk", frozenset({"m", "n"})))
    w.line(f"scores = tl.where((rn < {TKt}), {x.text}, -float(\"inf\"))")
    w.line("m_new = tl.maximum(m_i, tl.max(scores, axis=1, keep_dims=True))  # online softmax")
    w.line("m_safe = tl.where(m_new == -float(\"inf\"), 0.0, m_new)  # rows with no key yet")
    w.line("p = tl.exp(scores - m_safe)")
    w.line("alpha = tl.exp(m_i - m_safe)")
    w.line("l_i = l_i * alpha + tl.sum(p, axis=1, keep_dims=True)")
    v_tile = tile(w, a.v, bidx + (Ix("rnk", frozenset({"nk"})), Ix("rd", frozenset("d"))))
    w.line(f"acc = acc * alpha + tl.dot(p.to({v_tile.text}.dtype), {v_tile.text}"
           f"{dot_precision(w, a.q)})", a.node)
    w.line("m_i = m_new")
    w.pop()


def _attention_epilogue(w: KernelWriter, a: AttentionOp, bidx: tuple[Ix, ...]) -> None:
    """Normalize; store o (and any epilogue) and, where it is read, the
    log-sum-exp for the backward."""
    w.line("l_safe = tl.where(l_i == 0.0, 1.0, l_i)")
    w.line("out = acc / l_safe", a.node)
    rm = Ix("rm", frozenset("m"))
    results = {0: (Ix("out", frozenset({"m", "d"})), bidx + (rm, Ix("rd", frozenset("d"))))}
    if reads(w, 1):
        w.line("m_fin = tl.where(m_i == -float(\"inf\"), 0.0, m_i)")
        results[1] = (w.let("lse", "m_fin + tl.log(l_safe)", frozenset("m")), bidx + (rm,))
    store_gets(w, results)


def gates(w: KernelWriter) -> Launch:
    k = w.kernel
    slices, total = k.info["slices"], k.info["total"]
    M, width = w.shape(k.anchor)
    Mt = dim_text(M)
    grouped_tiles(w, Mt, str(width))
    w.line("rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)[:, None]")
    w.line("rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)[None, :]")
    w.axes(m=("rm", f"(rm < {Mt})"), n=("rn", f"(rn < {width})"))
    rm, rn = Ix("rm", frozenset("m")), Ix("rn", frozenset("n"))
    f = "tl.float64" if w.dtype(total).value == "f64" else "tl.float32"
    accs = [f"acc{g}" for g in range(len(slices))]
    for acc in accs:
        w.line(f"{acc} = tl.zeros((BLOCK_M, BLOCK_N), dtype={f})")
    for m in k.info["matmuls"]:
        a, b = w.g.nodes[m].srcs
        K = dim_text(w.shape(a)[-1])
        w.line(f"for k0 in range(0, {K}, BLOCK_K):  # {w.g.nodes[m].loc.source_line.strip()}")
        w.push()
        w.line("ka = k0 + tl.arange(0, BLOCK_K)[None, :]")
        w.line("kb = k0 + tl.arange(0, BLOCK_K)[:, None]")
        w.axes(ka=("ka", f"(ka < {K})"), kb=("kb", f"(kb < {K})"))
        at = operand(w, a, (rm, Ix("ka", frozenset({"ka"}))), {"m", "ka"})
        for g, acc in enumerate(accs):
            col = ix.add(Ix(str(g * width)), rn)
            bt = operand(w, b, (Ix("kb", frozenset({"kb"})), col), {"kb", "n"})
            w.line(f"{acc} = tl.dot({at.text}, {bt.text}, {acc}{dot_precision(w, m)})", m)
        w.pop()
    lane = rn if width != 1 else ix.ZERO  # how reads of a width-1 slice spell its index
    for g, acc in enumerate(accs):
        w.remember(total, (rm, ix.add(Ix(str(g * width)), lane)), Ix(acc, frozenset({"m", "n"})))
    for o in [o for o in w.kernel.outputs if w.shape(o) != (M, width)]:
        for g in range(len(accs)):  # the whole gates tensor: one store per gate's columns
            cols = (rm, ix.add(Ix(str(g * width)), lane))
            w.store(o, cols, w.value(o, cols))
    store_outputs(w, {i: (rm, rn) for i in w.kernel.outputs if w.shape(i) == (M, width)})
    ks = [dim_text(w.shape(w.g.nodes[m].srcs[0])[-1]) for m in k.info["matmuls"]]
    kmax = ks[0] if len(ks) == 1 else f"max({', '.join(ks)})"
    a = w.g.nodes[k.info["matmuls"][0]].srcs[0]
    config = f"blocks.gates({Mt}, {width}, {kmax}, {len(accs)}{dot_options(w, a)})"
    return dot_launch([tile_count(Mt, str(width))], config)
