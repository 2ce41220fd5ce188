"""Templates for the pattern kernels: flash attention and gated GEMMs (LSTM).

attention: one program owns BLOCK_M query rows of one (batch, head); keys and
  values stream through in BLOCK_N tiles with an online softmax in fp32
  (running max m_i, running sum l_i, rescaled accumulator), so the T x T
  scores live only in registers. Causal masks skip key tiles past the block's
  last row. The natural-log log-sum-exp of each row is stored for a backward
  pass. The head dim is padded to a power of two and masked.
gates: one program owns a [BLOCK_M, BLOCK_N] tile of every slice (gate); each
  K step loads an input tile once and multiplies it into one accumulator per
  gate; the slices' readers (the cell update) run as the epilogue.
"""

from __future__ import annotations

from dataclasses import dataclass

from ember.ir import dims
from ember.ir.dims import Dim, Shape

from . import ix
from .ix import Ix, dim_text
from .templates import Launch, _index_names, _name_index, dot_precision, operand, store_outputs
from .writer import KernelWriter


@dataclass(frozen=True)
class _Attention:
    """What the attention template needs: the pattern's nodes and sizes."""

    o: int              # softmax(...) @ v, the kernel's result
    s: int              # q @ k^T
    logits: int         # the transformed scores fed to the softmax
    probs: int          # the softmax
    batch: Shape
    T: Dim              # queries
    TK: Dim             # keys
    D: Dim              # value head dim
    DK: Dim             # query/key head dim


def attention(w: KernelWriter) -> Launch:
    a = _describe(w)
    bidx, q_tile = _attention_setup(w, a)
    _key_loop(w, a, bidx, q_tile)
    _attention_epilogue(w, a, bidx)
    Tt, TKt, Dt, DKt = (dim_text(d) for d in (a.T, a.TK, a.D, a.DK))
    return Launch([f"triton.cdiv({Tt}, BLOCK_M)", dim_text(dims.prod(a.batch))],
                  {"BLOCK_M": f"blocks.attention_rows({Tt})",
                   "BLOCK_N": f"blocks.attention_cols({TKt})",
                   "BLOCK_DK": f"blocks.head_dim({DKt})", "BLOCK_D": f"blocks.head_dim({Dt})"},
                  num_warps=f"blocks.attention_warps(max({DKt}, {Dt}))")


def _describe(w: KernelWriter) -> _Attention:
    info, o = w.kernel.info, w.kernel.anchor
    out, q = w.shape(o), w.g.nodes[info["scores"]].srcs[0]
    return _Attention(o, info["scores"], info["logits"], info["probs"], out[:-2], out[-2],
                      w.shape(info["scores"])[-1], out[-1], w.shape(q)[-1])


def _attention_setup(w: KernelWriter, a: _Attention) -> tuple[tuple[Ix, ...], Ix]:
    """Program ids, the query tile, and the running softmax state."""
    w.line("pid_m = tl.program_id(0)")
    w.line("pid_b = tl.program_id(1)")
    w.line("rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)[:, None]")
    w.line("rq = tl.arange(0, BLOCK_DK)[None, :]")
    w.line("rdk = tl.arange(0, BLOCK_DK)[:, None]")
    w.line("rd = tl.arange(0, BLOCK_D)[None, :]")
    w.axes(m=("rm", f"(rm < {dim_text(a.T)})"), q=("rq", f"(rq < {dim_text(a.DK)})"),
           dk=("rdk", f"(rdk < {dim_text(a.DK)})"), d=("rd", f"(rd < {dim_text(a.D)})"))
    bidx = _name_index(w, ix.delinear(Ix("pid_b"), a.batch), _index_names(a.batch, "b"))
    q = w.g.nodes[a.s].srcs[0]
    at = bidx + (Ix("rm", frozenset("m")), Ix("rq", frozenset("q")))
    q_tile = operand(w, q, ix.broadcast_index(at, a.batch + (a.T, a.DK), w.shape(q)), {"m", "q"})
    f = "tl.float64" if w.dtype(a.o).value == "f64" else "tl.float32"
    w.line(f"m_i = tl.full((BLOCK_M, 1), -float(\"inf\"), dtype={f})")
    w.line(f"l_i = tl.zeros((BLOCK_M, 1), dtype={f})")
    w.line(f"acc = tl.zeros((BLOCK_M, BLOCK_D), dtype={f})")
    if w.kernel.info["causal"]:
        w.line(f"hi = tl.minimum((pid_m + 1) * BLOCK_M, {dim_text(a.TK)})"
               f"  # later keys are all masked")
    else:
        w.line(f"hi = {dim_text(a.TK)}")
    return bidx, q_tile


def _key_loop(w: KernelWriter, a: _Attention, bidx: tuple[Ix, ...], q_tile: Ix) -> None:
    """Stream key/value tiles through the online softmax."""
    TKt = dim_text(a.TK)
    w.line("for start in range(0, hi, BLOCK_N):")
    w.push()
    w.line("rn = start + tl.arange(0, BLOCK_N)[None, :]")
    w.line("rnk = start + tl.arange(0, BLOCK_N)[:, None]")
    w.axes(n=("rn", f"(rn < {TKt})"), nk=("rnk", f"(rnk < {TKt})"))
    rm, rn = Ix("rm", frozenset("m")), Ix("rn", frozenset("n"))
    kt = w.g.nodes[a.s].srcs[1]
    at = ix.broadcast_index(bidx + (Ix("rdk", frozenset({"dk"})), rn), a.batch + (a.DK, a.TK),
                            w.shape(kt))
    k_tile = operand(w, kt, at, {"dk", "n"})
    w.line(f"qk = tl.dot({q_tile.text}, {k_tile.text}{dot_precision(w, a.s)})", a.s)
    w.remember(a.s, bidx + (rm, rn), Ix("qk", frozenset({"m", "n"})))
    x = w.value(a.logits, bidx + (rm, rn))
    w.line(f"scores = tl.where((rn < {TKt}), {x.text}, -float(\"inf\"))")
    w.line("m_new = tl.maximum(m_i, tl.max(scores, axis=1, keep_dims=True))  # online softmax")
    w.line("m_safe = tl.where(m_new == -float(\"inf\"), 0.0, m_new)  # rows with no key yet")
    w.line("p = tl.exp(scores - m_safe)")
    w.line("alpha = tl.exp(m_i - m_safe)")
    w.line("l_i = l_i * alpha + tl.sum(p, axis=1, keep_dims=True)", a.probs)
    v = w.g.nodes[a.o].srcs[1]
    at = ix.broadcast_index(bidx + (Ix("rnk", frozenset({"nk"})), Ix("rd", frozenset("d"))),
                            a.batch + (a.TK, a.D), w.shape(v))
    v_tile = operand(w, v, at, {"nk", "d"})
    w.line(f"acc = acc * alpha + tl.dot(p.to({v_tile.text}.dtype), {v_tile.text}"
           f"{dot_precision(w, a.o)})", a.o)
    w.line("m_i = m_new")
    w.pop()


def _attention_epilogue(w: KernelWriter, a: _Attention, bidx: tuple[Ix, ...]) -> None:
    """Normalize, store the result (and any epilogue), and the log-sum-exp."""
    w.line("l_safe = tl.where(l_i == 0.0, 1.0, l_i)")
    w.line("m_fin = tl.where(m_i == -float(\"inf\"), 0.0, m_i)")
    w.line("out = acc / l_safe", a.o)
    at = bidx + (Ix("rm", frozenset("m")), Ix("rd", frozenset("d")))
    w.remember(a.o, at, Ix("out", frozenset({"m", "d"})))
    store_outputs(w, {i: at for i in w.kernel.outputs})
    lse = w.extra_output("lse", a.batch + (a.T,), w.dtype(a.o))
    Tt = dim_text(a.T)
    w.line(f"tl.store({lse} + pid_b * {Tt} + rm, m_fin + tl.log(l_safe), mask=(rm < {Tt}))")
def gates(w: KernelWriter) -> Launch:
    k = w.kernel
    slices, total = k.info["slices"], k.info["total"]
    M, width = w.shape(k.anchor)
    Mt = dim_text(M)
    w.line("pid_m = tl.program_id(0)")
    w.line("pid_n = tl.program_id(1)")
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
    store_outputs(w, {i: (rm, rn) for i in w.kernel.outputs})
    ks = [dim_text(w.shape(w.g.nodes[m].srcs[0])[-1]) for m in k.info["matmuls"]]
    kmax = ks[0] if len(ks) == 1 else f"max({', '.join(ks)})"
    return Launch([f"triton.cdiv({Mt}, BLOCK_M)", f"triton.cdiv({width}, BLOCK_N)"],
                  {"BLOCK_M": f"blocks.gate_tile({Mt})", "BLOCK_N": f"blocks.gate_tile({width})",
                   "BLOCK_K": f"blocks.tile_k({kmax})"})
