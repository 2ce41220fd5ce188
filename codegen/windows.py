"""Templates for the windowed kernels: conv2d as an implicit GEMM, and pooling.

conv2d never builds an im2col buffer: each K step decodes its slice of
(channel, kh, kw) from the K index and loads the input pixels it needs, with
zero padding expressed as a mask. Pooling is a pointwise kernel over the pooled
output with the window unrolled; padded taps are -inf (max) or 0 (avg).
"""

from __future__ import annotations

from ember.ir import dims
from ember.ir.dims import Dim
from ember.ir.ops import Op

from . import ix
from .ix import Ix
from .templates import Launch, _name_index, dot_precision, operand, store_outputs
from .writer import KernelWriter


def conv(w: KernelWriter) -> Launch:
    c = w.kernel.anchor
    n = w.g.nodes[c]
    x, wt = n.srcs
    N, C, H, W = w.shape(x)
    OC, CG, KH, KW = w.shape(wt)
    _, _, OH, OW = w.shape(c)
    (sh, sw), (ph, pw), (dh, dw), groups = (n.attrs["stride"], n.attrs["padding"],
                                             n.attrs["dilation"], n.attrs["groups"])
    rows = dims.mul(N, OH * OW)
    ocg, ktot = OC // groups, CG * KH * KW
    w.line("pid_m = tl.program_id(0)")
    w.line("pid_n = tl.program_id(1)")
    w.line("group = tl.program_id(2)")
    w.line("rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)[:, None]")
    w.line("rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)[None, :]")
    w.axes(m=("rm", f"(rm < {ix.dim_text(rows)})"), n=("rn", f"(rn < {ocg})"))
    bn, oh, ow = _name_index(w, ix.delinear(Ix("rm", frozenset("m")), (N, OH, OW)),
                             ["batch", "oh", "ow"])
    oc = w.let("oc", f"group * {ocg} + rn", frozenset("n")) if groups > 1 else Ix(
        "rn", frozenset("n"))
    w.line(f"acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float{_bits(w, c)})")
    w.line(f"for k0 in range(0, {ktot}, BLOCK_K):")
    w.push()
    w.line("ka = k0 + tl.arange(0, BLOCK_K)[None, :]")
    w.line("kb = k0 + tl.arange(0, BLOCK_K)[:, None]")
    w.axes(ka=("ka", f"(ka < {ktot})"), kb=("kb", f"(kb < {ktot})"))
    ca, kha, kwa = _name_index(w, ix.delinear(Ix("ka", frozenset({"ka"})), (CG, KH, KW)),
                               ["ca", "kha", "kwa"])
    ih = w.let("ih", f"{oh} * {sh} - {ph} + {kha} * {dh}", frozenset({"m", "ka"}))
    iw = w.let("iw", f"{ow} * {sw} - {pw} + {kwa} * {dw}", frozenset({"m", "ka"}))
    cin = Ix(f"group * {CG} + {ca}", frozenset({"ka"})) if groups > 1 else ca
    tests = _bound_tests([(ih, H, ph, bool(oh.axes | kha.axes)),
                          (iw, W, pw, bool(ow.axes | kwa.axes))])
    if tests is None:  # a constant coordinate in the padding: every tap reads a zero
        w.line("inside = tl.zeros((BLOCK_M, BLOCK_K), dtype=tl.int1)")
    elif tests:
        w.line(f"inside = {' & '.join(tests)}")
    w.extra_mask = "inside" if tests != [] else ""
    va = operand(w, x, (bn, cin, ih, iw), {"m", "ka"})
    w.extra_mask = ""
    cb, khb, kwb = _name_index(w, ix.delinear(Ix("kb", frozenset({"kb"})), (CG, KH, KW)),
                               ["cb", "khb", "kwb"])
    vb = operand(w, wt, (oc, cb, khb, kwb), {"kb", "n"})
    w.line(f"acc = tl.dot({va.text}, {vb.text}, acc{dot_precision(w, c)})", c)
    w.pop()
    out_idx = (bn, oc, oh, ow)
    w.remember(c, out_idx, Ix("acc", frozenset({"m", "n"})))
    store_outputs(w, {o: out_idx for o in w.kernel.outputs})
    R = ix.dim_text(rows)
    return Launch([f"triton.cdiv({R}, BLOCK_M)", f"triton.cdiv({ocg}, BLOCK_N)", str(groups)],
                  {"BLOCK_M": f"blocks.tile({R})", "BLOCK_N": f"blocks.tile({ocg})",
                   "BLOCK_K": f"blocks.tile_k({ktot})"})


def _bound_tests(coords: list[tuple[Ix, Dim, int, bool]]) -> list[str] | None:
    """The tests keeping padded input coordinates (index, size, padding, varies)
    inside [0, size); None when one is a constant outside. A coordinate that
    varies over no tile axis (a size-1 output dim read by a size-1 kernel dim)
    is the constant -padding, so it is decided here: a mask mixing a Python bool
    with tensors fails in Triton's interpreter ("mask has unsupported dtype")."""
    tests = []
    for i, size, pad, varies in coords:
        if varies and pad:  # without padding every tap of a valid output lies inside
            tests.append(f"({i} >= 0) & ({i} < {ix.dim_text(size)})")
        elif pad:
            return None
    return tests


def _bits(w: KernelWriter, i: int) -> str:
    return "64" if w.dtype(i).value == "f64" else "32"


def pool(w: KernelWriter) -> Launch:
    p = w.kernel.anchor
    n = w.g.nodes[p]
    x = n.srcs[0]
    _, _, H, W = w.shape(x)
    (kh, kw), (sh, sw), (ph, pw) = n.attrs["kernel"], n.attrs["stride"], n.attrs["padding"]
    shape = w.shape(p)
    numel = ix.dim_text(dims.prod(shape))
    w.line("pid = tl.program_id(0)")
    w.line("offs = pid * BLOCK + tl.arange(0, BLOCK)")
    w.line(f"mask = offs < {numel}")
    w.axes(x=("offs", "mask"))
    bn, ch, oh, ow = _name_index(w, ix.delinear(Ix("offs", frozenset("x")), shape),
                                 ["batch", "ch", "oh", "ow"])
    is_max = n.op is Op.MAX_POOL2D
    fill = '-float("inf")' if is_max else "0.0"
    w.line(f"acc = tl.full((BLOCK,), {fill}, dtype=tl.float{_bits(w, p)})")
    w.line(f"for i in tl.static_range({_taps(oh, kh, ph, H)}):")
    w.depth += 1
    w.line(f"for j in tl.static_range({_taps(ow, kw, pw, W)}):")
    w.push()
    ih = w.let("ih", f"{oh} * {sh} - {ph} + i", frozenset("x"))
    iw = w.let("iw", f"{ow} * {sw} - {pw} + j", frozenset("x"))
    # a constant coordinate needs no test: _taps kept its taps inside
    tests = _bound_tests([(ih, H, ph if oh.axes else 0, True), (iw, W, pw if ow.axes else 0, True)])
    if tests:
        w.line(f"inside = {' & '.join(tests)}")
        w.extra_mask = "inside"
    v = w.value(x, (bn, ch, ih, iw))
    tap = f"tl.where(inside, {v.text}, {fill})" if w.extra_mask else v.text
    w.extra_mask = ""
    w.line(f"acc = tl.maximum(acc, {tap}, propagate_nan=tl.PropagateNan.ALL)" if is_max
           else f"acc += {tap}", p)
    w.pop()
    w.depth -= 1
    if not is_max:
        w.line(f"acc = acc / {kh * kw}", p)
    idx = (bn, ch, oh, ow)
    w.remember(p, idx, Ix("acc", frozenset("x")))
    store_outputs(w, {o: idx for o in w.kernel.outputs})
    return Launch([f"triton.cdiv({numel}, BLOCK)"], {"BLOCK": f"blocks.pointwise({numel})"})


def _taps(out: Ix, k: int, pad: int, size: Dim) -> str:
    """The static_range of window taps along one axis. For a size-1 output dim
    (`out` is the constant 0) the input coordinate is `tap - pad`, so the taps
    that fall in the padding are left out here rather than masked."""
    if out.axes:
        return str(k)
    assert isinstance(size, int), "a size-1 output dim comes from a static input dim"
    return f"{min(pad, k)}, {min(k, pad + size)}"


