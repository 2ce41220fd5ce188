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

from ember.ir import dims

from . import ix
from .ix import Ix, dim_text
from .templates import Launch, _index_names, _name_index, dot_precision, operand, store_outputs
from .writer import KernelWriter


def attention(w: KernelWriter) -> Launch:
    k = w.kernel
    o, s, x_node, p = k.anchor, k.info["scores"], k.info["logits"], k.info["probs"]
    q, kt = w.g.nodes[s].srcs
    v = w.g.nodes[o].srcs[1]
    out = w.shape(o)
    batch, T, D, DK = out[:-2], out[-2], out[-1], w.shape(q)[-1]
    TK = w.shape(s)[-1]
    Tt, TKt, Dt, DKt = dim_text(T), dim_text(TK), dim_text(D), dim_text(DK)
    w.line("pid_m = tl.program_id(0)")
    w.line("pid_b = tl.program_id(1)")
    w.line("rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)[:, None]")
    w.line("rq = tl.arange(0, BLOCK_DK)[None, :]")
    w.line("rdk = tl.arange(0, BLOCK_DK)[:, None]")
    w.line("rd = tl.arange(0, BLOCK_D)[None, :]")
    w.axes(m=("rm", f"(rm < {Tt})"), q=("rq", f"(rq < {DKt})"), dk=("rdk", f"(rdk < {DKt})"),
           d=("rd", f"(rd < {Dt})"))
    bidx = _name_index(w, ix.delinear(Ix("pid_b"), batch), _index_names(batch, "b"))
    rm, rd, rdk = Ix("rm", frozenset("m")), Ix("rd", frozenset("d")), Ix("rdk", frozenset({"dk"}))
    rq = Ix("rq", frozenset("q"))
    qt = operand(w, q, ix.broadcast_index(bidx + (rm, rq), batch + (T, DK), w.shape(q)),
                 {"m", "q"})
    f = "tl.float64" if w.dtype(o).value == "f64" else "tl.float32"
    w.line(f"m_i = tl.full((BLOCK_M, 1), -float(\"inf\"), dtype={f})")
    w.line(f"l_i = tl.zeros((BLOCK_M, 1), dtype={f})")
    w.line(f"acc = tl.zeros((BLOCK_M, BLOCK_D), dtype={f})")
    if k.info["causal"]:
        w.line(f"hi = tl.minimum((pid_m + 1) * BLOCK_M, {TKt})  # later keys are all masked")
    else:
        w.line(f"hi = {TKt}")
    w.line("for start in range(0, hi, BLOCK_N):")
    w.push()
    w.line("rn = start + tl.arange(0, BLOCK_N)[None, :]")
    w.line("rnk = start + tl.arange(0, BLOCK_N)[:, None]")
    w.axes(n=("rn", f"(rn < {TKt})"), nk=("rnk", f"(rnk < {TKt})"))
    rn, rnk = Ix("rn", frozenset("n")), Ix("rnk", frozenset({"nk"}))
    kt_tile = operand(w, kt, ix.broadcast_index(bidx + (rdk, rn), batch + (DK, TK), w.shape(kt)),
                      {"dk", "n"})
    w.line(f"qk = tl.dot({qt.text}, {kt_tile.text}{dot_precision(w, s)})", s)
    w.remember(s, bidx + (rm, rn), Ix("qk", frozenset({"m", "n"})))
    x = w.value(x_node, bidx + (rm, rn))
    w.line(f"scores = tl.where((rn < {TKt}), {x.text}, -float(\"inf\"))")
    w.line("m_new = tl.maximum(m_i, tl.max(scores, axis=1, keep_dims=True))  # online softmax")
    w.line("m_safe = tl.where(m_new == -float(\"inf\"), 0.0, m_new)  # rows with no key yet")
    w.line("p = tl.exp(scores - m_safe)")
    w.line("alpha = tl.exp(m_i - m_safe)")
    w.line("l_i = l_i * alpha + tl.sum(p, axis=1, keep_dims=True)", p)  # softmax's sum
    vt = operand(w, v, ix.broadcast_index(bidx + (rnk, rd), batch + (TK, D), w.shape(v)),
                 {"nk", "d"})
    w.line(f"acc = acc * alpha + tl.dot(p.to({vt.text}.dtype), {vt.text}"
           f"{dot_precision(w, o)})", o)
    w.line("m_i = m_new")
    w.pop()
    w.line("l_safe = tl.where(l_i == 0.0, 1.0, l_i)")
    w.line("m_fin = tl.where(m_i == -float(\"inf\"), 0.0, m_i)")
    w.line("out = acc / l_safe", o)
    w.remember(o, bidx + (rm, rd), Ix("out", frozenset({"m", "d"})))
    store_outputs(w, {i: bidx + (rm, rd) for i in w.kernel.outputs})
    lse = w.extra_output("lse", batch + (T,), w.dtype(o))
    w.line(f"tl.store({lse} + pid_b * {Tt} + rm, m_fin + tl.log(l_safe), mask=(rm < {Tt}))")
    return Launch([f"triton.cdiv({Tt}, BLOCK_M)", dim_text(dims.prod(batch))],
                  {"BLOCK_M": f"blocks.attention_rows({Tt})",
                   "BLOCK_N": f"blocks.attention_cols({TKt})",
                   "BLOCK_DK": f"blocks.head_dim({DKt})", "BLOCK_D": f"blocks.head_dim({Dt})"},
                  num_warps=f"blocks.attention_warps(max({DKt}, {Dt}))")


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
