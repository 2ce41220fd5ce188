"""Templates for the windowed kernels: conv2d as an implicit GEMM, pooling and
max-pool's backward.

conv2d never builds an im2col buffer: each K step decodes its slice of
(channel, kh, kw) from the K index and loads the input pixels it needs, with
zero padding expressed as a mask. The same template runs conv2d's gradients
(passes/vjp.py): the input gradient reads a PAD view of dy (interior padding =
the stride) and a FLIP view of the weight, which the writer folds into the
loads; the weight gradient's channels are the batch, so K = N*OH*OW may be
symbolic. Pooling is a pointwise kernel over the pooled output with the window
unrolled; padded taps are -inf (max) or 0 (avg). Max-pool's backward is a
pointwise kernel over the input (see pool_grad).
"""

from __future__ import annotations

from ember.ir import dims
from ember.ir.dims import Dim, Shape
from ember.ir.ops import Op

from . import ix
from .ix import Ix
from .templates import (
    Launch,
    _name_index,
    colsum_add,
    colsum_start,
    colsum_store,
    dot_launch,
    dot_precision,
    grouped_tiles,
    operand,
    store_outputs,
    tile_count,
)
from .writer import KernelWriter


def conv(w: KernelWriter) -> Launch:
    c = w.kernel.anchor
    n = w.g.nodes[c]
    N = w.shape(n.srcs[0])[0]
    OC, CG, KH, KW = w.shape(n.srcs[1])
    _, _, OH, OW = w.shape(c)
    groups = n.attrs["groups"]
    # dims may be symbolic: a weight gradient's channels (so its K) are the batch
    ocg, ktot, rows = dims.div(OC, groups), dims.prod((CG, KH, KW)), dims.prod((N, OH, OW))
    assert ocg is not None, "the shape rule checks that groups divide the channels"
    R, K, OCG = ix.dim_text(rows), ix.dim_text(ktot), ix.dim_text(ocg)
    grouped_tiles(w, R, OCG)
    w.line("group = tl.program_id(1)")
    w.line("rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)[:, None]")
    w.line("rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)[None, :]")
    w.axes(m=("rm", f"(rm < {R})"), n=("rn", f"(rn < {OCG})"))
    out = _name_index(w, ix.delinear(Ix("rm", frozenset("m")), (N, OH, OW)),
                      ["batch", "oh", "ow"])
    oc = w.let("oc", f"group * {ix.wrap(OCG)} + rn", frozenset("n")) if groups > 1 else Ix(
        "rn", frozenset("n"))
    colsum_start(w, f"tl.float{_bits(w, c)}")
    w.line(f"acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float{_bits(w, c)})")
    w.line(f"for k0 in range(0, {K}, BLOCK_K):")
    w.push()
    w.line("ka = k0 + tl.arange(0, BLOCK_K)[None, :]")
    w.line("kb = k0 + tl.arange(0, BLOCK_K)[:, None]")
    w.axes(ka=("ka", f"(ka < {K})"), kb=("kb", f"(kb < {K})"))
    va = _input_tile(w, c, out)
    cb, khb, kwb = _name_index(w, ix.delinear(Ix("kb", frozenset({"kb"})), (CG, KH, KW)),
                               ["cb", "khb", "kwb"])
    vb = operand(w, n.srcs[1], (oc, cb, khb, kwb), {"kb", "n"})
    w.line(f"acc = tl.dot({va.text}, {vb.text}, acc{dot_precision(w, c)})", c)
    colsum = colsum_add(w, vb)
    w.pop()
    out_idx = (out[0], oc, out[1], out[2])
    w.remember(c, out_idx, Ix("acc", frozenset({"m", "n"})))
    colsum_store(w, oc)
    store_outputs(w, {o: out_idx for o in w.kernel.outputs if o != colsum})
    return dot_launch([tile_count(R, OCG), str(groups)], f"blocks.conv({R}, {OCG})")


def _input_tile(w: KernelWriter, c: int, out: tuple[Ix, ...]) -> Ix:
    """The [BLOCK_M, BLOCK_K] tile of conv c's input: output pixel `out` (rows)
    times the K slice's (channel, kh, kw) taps, zero in the padding."""
    n = w.g.nodes[c]
    x = n.srcs[0]
    _, _, H, W = w.shape(x)
    CG, KH, KW = w.shape(n.srcs[1])[1:]
    (sh, sw), (ph, pw), (dh, dw) = n.attrs["stride"], n.attrs["padding"], n.attrs["dilation"]
    bn, oh, ow = out
    ca, kha, kwa = _name_index(w, ix.delinear(Ix("ka", frozenset({"ka"})), (CG, KH, KW)),
                               ["ca", "kha", "kwa"])
    ih = w.let("ih", _coord(oh, sh, ph, kha, dh), frozenset({"m", "ka"}))
    iw = w.let("iw", _coord(ow, sw, pw, kwa, dw), frozenset({"m", "ka"}))
    cin = (Ix(f"group * {ix.wrap(ix.dim_text(CG))} + {ca}", frozenset({"ka"}))
           if n.attrs["groups"] > 1 else ca)
    tests = _bound_tests([(ih, H, ph, bool(oh.axes | kha.axes)),
                          (iw, W, pw, bool(ow.axes | kwa.axes))])
    if tests is None:  # a constant coordinate in the padding: every tap reads a zero
        w.line("inside = tl.zeros((BLOCK_M, BLOCK_K), dtype=tl.int1)")
    elif tests:
        w.line(f"inside = {' & '.join(tests)}")
    w.extra_mask = "inside" if tests != [] else ""
    va = operand(w, x, (bn, cin, ih, iw), {"m", "ka"})
    w.extra_mask = ""
    return va


def _coord(out: Ix, stride: int, pad: int, tap: Ix, dilation: int) -> str:
    """The input coordinate `out * stride - pad + tap * dilation`, as written
    by hand (no factors of 1, no `- 0`)."""
    return f"{ix.mul(out, stride)}{_minus(pad)} + {ix.mul(tap, dilation)}"


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
    (bn, ch, oh, ow), launch = _flat_tile(w, w.shape(p), ["batch", "ch", "oh", "ow"])
    is_max = n.op is Op.MAX_POOL2D
    fill = '-float("inf")' if is_max else "0.0"
    w.line(f"acc = tl.full((BLOCK,), {fill}, dtype=tl.float{_bits(w, p)})")
    w.line(f"for i in tl.static_range({_taps(oh, kh, ph, H)}):")
    w.depth += 1
    w.line(f"for j in tl.static_range({_taps(ow, kw, pw, W)}):")
    w.push()
    # a coordinate constant over the block (a size-1 output dim) is a scalar:
    # its axes say so, or a load would pair a scalar address with a block mask
    ih = w.let("ih", _coord(oh, sh, ph, Ix("i"), 1), oh.axes)
    iw = w.let("iw", _coord(ow, sw, pw, Ix("j"), 1), ow.axes)
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
    return launch


def _flat_tile(w: KernelWriter, shape: Shape, names: list[str]) -> tuple[tuple[Ix, ...], Launch]:
    """A one-axis tile of BLOCK positions of `shape`: their index, named, and
    the launch covering the shape."""
    numel = ix.dim_text(dims.prod(shape))
    w.line("pid = tl.program_id(0)")
    w.line("offs = pid * BLOCK + tl.arange(0, BLOCK)")
    w.line(f"mask = offs < {numel}")
    w.axes(x=("offs", "mask"))
    idx = _name_index(w, ix.delinear(Ix("offs", frozenset("x")), shape), names)
    return idx, Launch([f"triton.cdiv({numel}, BLOCK)"], {"BLOCK": f"blocks.pointwise({numel})"})


def _taps(out: Ix, k: int, pad: int, size: Dim) -> str:
    """The static_range of window taps along one axis. For a size-1 output dim
    (`out` is the constant 0) the input coordinate is `tap - pad`, so the taps
    that fall in the padding are left out here rather than masked."""
    if out.axes:
        return str(k)
    assert isinstance(size, int), "a size-1 output dim comes from a static input dim"
    return f"{min(pad, k)}, {min(k, pad + size)}"


# ---- max-pool backward ------------------------------------------------------------------
#
# dx[h, w] sums dy over the windows whose first maximum (row-major, NaN counts
# as the maximum, padding never wins) is x[h, w]. One program owns a block of
# INPUT positions and, for each of the few windows that can contain its
# position, recomputes the window's first argmax: every store is owned by one
# lane, so overlapping windows need no atomics and the sum is deterministic.

POOL_GRAD_LOCALS = ("xh", "xw", "wa", "wb", "ti", "tj", "win", "best", "first", "take")


def pool_grad(w: KernelWriter) -> Launch:
    p = w.kernel.anchor
    n = w.g.nodes[p]
    x, dy = n.srcs
    w.used.update(POOL_GRAD_LOCALS)
    (bn, ch, xh, xw), launch = _flat_tile(w, w.shape(p), ["batch", "ch", "xh", "xw"])
    xh, xw = _on_lanes(w, xh, "xh"), _on_lanes(w, xw, "xw")
    w.line(f"acc = tl.zeros((BLOCK,), dtype=tl.float{_bits(w, p)})")
    (kh, kw), (sh, sw) = n.attrs["kernel"], n.attrs["stride"]
    _, _, OH, OW = w.shape(dy)
    w.line(f"for wa in tl.static_range({_windows_over(kh, sh, OH)}):")
    w.depth += 1
    w.line(f"for wb in tl.static_range({_windows_over(kw, sw, OW)}):")
    w.push()
    oh, ti = _window_at(w, xh, "wa", ("oh", "ti"), OH, n.attrs["padding"][0], sh)
    ow, tj = _window_at(w, xw, "wb", ("ow", "tj"), OW, n.attrs["padding"][1], sw)
    w.line(f"win = mask & (oh >= 0) & (ti < {kh}) & (ow >= 0) & (tj < {kw})")
    _first_max(w, p, (bn, ch, oh, ow))
    w.extra_mask = "win"
    g = w.value(dy, (bn, ch, oh, ow))
    w.extra_mask = ""
    w.line(f"acc += tl.where(win & (first == ti * {kw} + tj), {g.text}, 0.0)", p)
    w.pop()
    w.depth -= 1
    idx = (bn, ch, xh, xw)
    w.remember(p, idx, Ix("acc", frozenset("x")))
    store_outputs(w, {o: idx for o in w.kernel.outputs})
    return launch


def _on_lanes(w: KernelWriter, pos: Ix, name: str) -> Ix:
    """The position along a size-1 dim (the constant 0) as a tensor: the window
    tests built from it must be tensors too, as Triton's interpreter rejects a
    mask mixing Python bools with tensors ("mask has unsupported dtype")."""
    if pos.axes:
        return pos
    return w.let(name, "tl.zeros((BLOCK,), dtype=tl.int32)", frozenset("x"))


def _windows_over(k: int, s: int, out: Dim) -> int:
    """How many windows along one axis can contain an input position."""
    most = -(-k // s)
    return min(most, out) if isinstance(out, int) else most


def _window_at(w: KernelWriter, pos: Ix, back: str, axis: tuple[str, str], size: Dim,
               pad: int, stride: int) -> tuple[Ix, Ix]:
    """The window `back` steps before the last one that starts at or before the
    position along one axis, and the position's tap in it (>= 0; the window
    holds the position when the tap is below the kernel size, and exists when
    its index is >= 0)."""
    name, tap = axis
    at = f"{pos} + {pad}" if pad else pos.text
    o = w.let(name, f"tl.minimum({ix.wrap(at)} // {stride}, {ix.dim_text(size)} - 1) - {back}",
              pos.axes)
    return o, w.let(tap, f"{at} - {name} * {stride}", pos.axes)


def _first_max(w: KernelWriter, p: int, win: tuple[Ix, ...]) -> None:
    """`first`: the row-major tap index of window `win`'s first maximum; taps
    in the padding are skipped, a NaN beats every number."""
    n = w.g.nodes[p]
    x = n.srcs[0]
    bn, ch, oh, ow = win
    (kh, kw), (sh, sw), (ph, pw) = n.attrs["kernel"], n.attrs["stride"], n.attrs["padding"]
    _, _, H, W = w.shape(x)
    w.line(f"best = tl.full((BLOCK,), -float(\"inf\"), dtype=tl.float{_bits(w, x)})")
    w.line(f"first = tl.full((BLOCK,), {kh * kw}, dtype=tl.int32)")
    w.line(f"for i in tl.static_range({kh}):")
    w.depth += 1
    w.line(f"for j in tl.static_range({kw}):")
    w.push()
    ih = w.let("ih", _coord(oh, sh, ph, Ix("i"), 1), frozenset("x"))
    iw = w.let("iw", _coord(ow, sw, pw, Ix("j"), 1), frozenset("x"))
    w.line(f"inside = win & (ih >= 0) & (ih < {ix.dim_text(H)}) & (iw >= 0) & "
           f"(iw < {ix.dim_text(W)})")
    w.extra_mask = "inside"
    v = w.value(x, (bn, ch, ih, iw))
    w.extra_mask = ""
    w.line(f"take = inside & ((first == {kh * kw}) | ({v} > best) | "
           f"(({v} != {v}) & (best == best)))")
    w.line(f"best = tl.where(take, {v}, best)")
    w.line(f"first = tl.where(take, i * {kw} + j, first)", p)
    w.pop()
    w.depth -= 1


def _minus(pad: int) -> str:
    return f" - {pad}" if pad else ""
