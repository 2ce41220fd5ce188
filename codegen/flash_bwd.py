"""The attention backward as a FlashAttention-2 kernel pair.

Both kernels recompute the probabilities of a score tile from the saved
log-sum-exp, p = exp(score_mod(q k^T) - lse), so no T x T value reaches
memory, and take delta = rowsum(do * o) (an IR reduction computed before
them) so that the logits' cotangent is dx = p (do v^T - delta). The score
region's second result maps dx to the raw scores' cotangent ds (the
derivative of the scale and mask, evaluated in registers). Each program owns
its output rows, so nothing is accumulated across programs: no atomics, the
same result on every run.

attention_dkdv: one program per BLOCK_N keys of one (batch, head) keeps
  k, v and the dk, dv accumulators and walks the query blocks: dv += p^T do,
  dk += ds^T q. It computes the tile transposed ([keys, queries]), so p^T and
  ds^T come straight out of the dots. With a causal mask it starts at the
  first query block that sees its keys.
attention_dq: one program per BLOCK_M queries keeps q, do and the dq
  accumulator and walks the key blocks: dq += ds k; causal masks stop at the
  block's last row, as in the forward kernel.
"""

from __future__ import annotations

from ember.ir.dims import Dim

from .fused import (
    AttentionOp,
    ScoreRegion,
    batch_index,
    describe,
    float_type,
    head_axes,
    head_text,
    launch,
    store_gets,
    tile,
)
from .ix import Ix, dim_text
from .templates import Launch, dot_precision
from .writer import KernelWriter

WARPS = "blocks.ATTENTION_BWD_WARPS"


def _ax(name: str, axis: str) -> Ix:
    return Ix(name, frozenset({axis}))


def _grad_operands(w: KernelWriter, a: AttentionOp) -> tuple[int, int, int]:
    """(do, lse, delta) of the attention_grad node."""
    do, lse, delta = w.g.nodes[a.node].srcs[3:6]
    return do, lse, delta


def _acc(w: KernelWriter, a: AttentionOp, name: str, rows: str, cols: str) -> None:
    w.line(f"{name} = tl.zeros(({rows}, {cols}), dtype={float_type(w, a)})")


def _block(w: KernelWriter, var: str, start: str, block: str, size: Dim, axis: str,
           rows: bool) -> Ix:
    """The indices of one block, along the tile's rows or its columns."""
    w.line(f"{var} = {start} + tl.arange(0, {block})[{':, None' if rows else 'None, :'}]")
    w.axes(**{axis: (var, f"({var} < {dim_text(size)})")})
    return _ax(var, axis)


def _probs_and_ds(w: KernelWriter, a: AttentionOp, at: tuple[Ix, ...], s: Ix, lse: Ix,
                  delta: Ix, dp: str, valid: str) -> Ix:
    """p (as `p`) and ds (returned) of one score tile s at index `at`; dp is
    the expression of do v^T on the same tile."""
    region = ScoreRegion(w, a, at)
    x = region.result(0, s)
    w.line(f"p = tl.where({valid}, tl.exp({x.text} - {lse.text}), 0.0)", a.node)
    w.line(f"dx = p * ({dp} - {delta.text})", a.node)
    ds = region.result(1, s, Ix("dx", s.axes))
    return w.let("ds", f"tl.where({valid}, {ds.text}, 0.0)", s.axes, a.node)


# ---- dk, dv: over key blocks -------------------------------------------------------

def attention_dkdv(w: KernelWriter) -> Launch:
    a = describe(w)
    do, lse, delta = _grad_operands(w, a)
    Tt, prec = dim_text(a.T), dot_precision(w, a.q)
    w.line("pid_n = tl.program_id(0)")
    bidx = batch_index(w, a)
    rn = _block(w, "rn", "pid_n * BLOCK_N", "BLOCK_N", a.TK, "n", rows=True)
    head_axes(w, a)
    rq, rd = _ax("rq", "q"), _ax("rd", "d")
    k_tile = tile(w, a.k, bidx + (rn, rq))                         # [BLOCK_N, DK]
    v_tile = tile(w, a.v, bidx + (rn, rd))                         # [BLOCK_N, D]
    _acc(w, a, "dk_acc", "BLOCK_N", "BLOCK_DK")
    _acc(w, a, "dv_acc", "BLOCK_N", "BLOCK_D")
    lo = "pid_n * BLOCK_N // BLOCK_M * BLOCK_M  # earlier queries see none of these keys"
    w.line(f"lo = {lo if a.causal else 0}")
    w.line(f"for start in range(lo, {Tt}, BLOCK_M):")
    w.push()
    rm = _block(w, "rm", "start", "BLOCK_M", a.T, "m", rows=True)
    rmt = _block(w, "rmt", "start", "BLOCK_M", a.T, "mt", rows=False)
    q_t = tile(w, a.q, bidx + (rmt, _ax("rdk", "dk")))             # [DK, BLOCK_M]
    w.line(f"st = tl.dot({k_tile.text}, {q_t.text}{prec})", a.node)
    do_tile = tile(w, do, bidx + (rm, rd))                         # [BLOCK_M, D]
    valid = f"(rn < {dim_text(a.TK)}) & (rmt < {Tt})"
    dp = f"tl.dot({v_tile.text}, tl.trans({do_tile.text}){prec})"
    ds = _probs_and_ds(w, a, bidx + (rmt, rn), Ix("st", frozenset({"n", "mt"})),
                       w.value(lse, bidx + (rmt,)), w.value(delta, bidx + (rmt,)), dp, valid)
    w.line(f"dv_acc += tl.dot(p.to({do_tile.text}.dtype), {do_tile.text}{prec})", a.node)
    w.line(f"dk_acc += tl.dot({ds.text}.to({q_t.text}.dtype), tl.trans({q_t.text}){prec})",
           a.node)
    w.pop()
    store_gets(w, {1: (Ix("dk_acc", frozenset({"n", "q"})), bidx + (rn, rq)),
                   2: (Ix("dv_acc", frozenset({"n", "d"})), bidx + (rn, rd))})
    head = head_text(a)
    return launch(a, a.TK, "BLOCK_N", f"blocks.dkdv_queries({Tt}, {head})",
                  f"blocks.dkdv_keys({dim_text(a.TK)}, {head})", WARPS)


# ---- dq: over query blocks ---------------------------------------------------------

def attention_dq(w: KernelWriter) -> Launch:
    a = describe(w)
    do, lse, delta = _grad_operands(w, a)
    TKt, prec = dim_text(a.TK), dot_precision(w, a.q)
    w.line("pid_m = tl.program_id(0)")
    bidx = batch_index(w, a)
    rm = _block(w, "rm", "pid_m * BLOCK_M", "BLOCK_M", a.T, "m", rows=True)
    head_axes(w, a)
    rq = _ax("rq", "q")
    q_tile = tile(w, a.q, bidx + (rm, rq))                         # [BLOCK_M, DK]
    do_tile = tile(w, do, bidx + (rm, _ax("rd", "d")))             # [BLOCK_M, D]
    lse_r, delta_r = (w.value(x, bidx + (rm,)) for x in (lse, delta))
    _acc(w, a, "dq_acc", "BLOCK_M", "BLOCK_DK")
    hi = f"tl.minimum((pid_m + 1) * BLOCK_M, {TKt})  # later keys are all masked"
    w.line(f"hi = {hi if a.causal else TKt}")
    w.line("for start in range(0, hi, BLOCK_N):")
    w.push()
    rn = _block(w, "rn", "start", "BLOCK_N", a.TK, "nk", rows=True)
    rnt = _block(w, "rnt", "start", "BLOCK_N", a.TK, "n", rows=False)
    k_t = tile(w, a.k, bidx + (rnt, _ax("rdk", "dk")))             # [DK, BLOCK_N]
    w.line(f"s = tl.dot({q_tile.text}, {k_t.text}{prec})", a.node)
    v_tile = tile(w, a.v, bidx + (rn, _ax("rd", "d")))             # [BLOCK_N, D]
    valid = f"(rm < {dim_text(a.T)}) & (rnt < {TKt})"
    dp = f"tl.dot({do_tile.text}, tl.trans({v_tile.text}){prec})"
    ds = _probs_and_ds(w, a, bidx + (rm, rnt), Ix("s", frozenset({"m", "n"})), lse_r, delta_r,
                       dp, valid)
    w.line(f"dq_acc += tl.dot({ds.text}.to({k_t.text}.dtype), tl.trans({k_t.text}){prec})",
           a.node)
    w.pop()
    store_gets(w, {0: (Ix("dq_acc", frozenset({"m", "q"})), bidx + (rm, rq))})
    return launch(a, a.T, "BLOCK_M", warps=WARPS)
