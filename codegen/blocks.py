"""Block-size heuristics (no autotuning without a GPU): powers of two from the
runtime sizes, so one generated kernel serves every batch size and sequence
length. The same functions run in the launcher and in ahead-of-time compiles;
each is cached, so a launch at a shape seen before costs a dictionary lookup."""

from __future__ import annotations

from functools import cache
from typing import NamedTuple


def next_pow2(n: int) -> int:
    return 1 << max(0, (int(n) - 1).bit_length())


@cache
def pointwise(numel: int) -> int:
    """One program covers up to 1024 elements (fewer programs also keep the
    interpreter fast)."""
    return min(1024, max(16, next_pow2(numel)))


# A row of up to 32 KiB (8192 f32, 4096 f64) stays in one block: on sm_90 the
# layer_norm kernel then takes 126 registers per thread (f32, 4 warps) and 16384
# f32 takes 230, near the 255 limit (f64 16384 spills). Longer rows loop over
# chunks of 8 KiB, 16 f32 per thread.
PERSISTENT_BYTES = 32768
CHUNK_BYTES = 8192
#: Rows per looped tile when rows are contiguous (a column sum): 16 f32 make
#: 64-byte loads, and few columns still spread over several programs.
OUTER_ROWS = 16


@cache
def reduce_looped(cols: int, itemsize: int = 4) -> bool:
    """Does a row of `cols` elements loop over chunks (else one block holds it)?
    The one decision the template, the launcher and the AOT check all use."""
    return next_pow2(cols) * itemsize > PERSISTENT_BYTES


@cache
def reduce_cols(cols: int, itemsize: int = 4, inner: bool = True) -> int:
    """RBLOCK: the whole row, or a chunk of a looped one. A row whose
    elements are strided (`inner=False`: the kept dims are the contiguous ones)
    gets short chunks of OUTER_ROWS rows."""
    if not reduce_looped(cols, itemsize):
        return max(2, next_pow2(cols))
    return CHUNK_BYTES // itemsize // (1 if inner else OUTER_ROWS)


@cache
def reduce_rows(rows: int, cols: int, itemsize: int = 4, inner: bool = True) -> int:
    """XBLOCK: rows per program. Persistent: a tile of at most 4096 elements, or
    one row when a row alone is longer. Looped: one contiguous row, or up to
    OUTER_ROWS strided ones."""
    if not reduce_looped(cols, itemsize):
        return max(1, min(next_pow2(rows), 4096 // reduce_cols(cols, itemsize)))
    return 1 if inner else min(next_pow2(rows), OUTER_ROWS)


class Config(NamedTuple):
    """The launch of a dot kernel (matmul, conv, gates): its tiles, how many
    row tiles a group of programs shares (GROUP_M, for L2 reuse), warps and
    software-pipeline stages. The launcher unpacks it in this order and the
    ahead-of-time check compiles the same values."""

    block_m: int
    block_n: int
    block_k: int
    group_m: int
    num_warps: int
    num_stages: int


#: Stages of kernels without a dot: the launcher and the sm_90 check agree on
#: 2, which every such kernel of every model compiles with, without spills.
STAGES = 2
CONV_STAGES = 3
#: Streaming multiprocessors of an H100 SXM: big tiles only when they still
#: give every SM a program.
SMS = 132
GROUP_M = 8

#: fp32 FMAs per thread per K step of a dot without tensor cores (`ieee`, f64):
#: the FMA layout keeps every A row and B column a thread touches in registers.
#: Measured on sm_90 (`a + h @ w`, K=32): 64x64x32 spills at 4 warps (1024) and
#: 8 (512), 32x64x32 at 4 (512); 32x64x32 at 8 warps and 64x64x16 (256) do not.
FMA_WORK = 256


def tile(n: int) -> int:
    """M or N tile of a dot: 16 (the tensor-core minimum) to 64."""
    return min(64, max(16, next_pow2(n)))


def tile_k(k: int) -> int:
    """K tile: 16 or 32 (sm_90 needs K >= 8 for fp32, >= 16 for halves)."""
    return min(32, max(16, next_pow2(k)))


@cache
def matmul(m: int, n: int, k: int, itemsize: int = 4, mma: bool = False) -> Config:
    """The configuration of an [m, k] x [k, n] GEMM. With tensor cores (`mma`:
    tf32 or 16-bit operands) a problem that fills every SM with 128-row tiles
    gets 128 x 128 (K 64 for 16-bit operands), 8 warps and 3 stages; anything
    else 64 x 64 tiles within the FMA budget. (Triton's tutorial's 128 x 256 x
    64 bf16 tile spills on sm_90 once an epilogue is fused: 48-272 bytes per
    thread in GPT-2 small's kernels, and 240 KB of shared memory.)"""
    if mma and _programs(m, n, 128, 128) >= SMS:
        return Config(128, 128, 64 if itemsize <= 2 else 32, GROUP_M, 8, 3)
    if mma:
        return Config(tile(m), tile(n), tile_k(k), GROUP_M, 4, 3)
    return fit(Config(tile(m), tile(n), tile_k(k), GROUP_M, 4, 2), FMA_WORK * 4 // itemsize)


@cache
def conv(m: int, n: int) -> Config:
    """An implicit-GEMM conv: rows are output pixels, columns output channels
    (see conv_warps). Programs run row by row (GROUP_M 1): its B operand is a
    small weight, and at GROUP_M 8 resnet's weight-gradient conv spilled 8
    bytes on sm_90 (2 stages). Three stages (Triton's default): over every conv
    of the LeNet, ResNet and MLP backward and training steps (B=8) on sm_90,
    2 stages spilled LeNet's weight-gradient conv (64 x 32 x 16, 8 warps: 16
    bytes), 1 stage its training step's (24 bytes), 3 stages none."""
    return Config(tile(m), tile(n), CONV_BLOCK_K, 1, conv_warps(m, n), CONV_STAGES)


def fit(c: Config, work: int) -> Config:
    """Raise warps to 8, then halve BLOCK_K to 16, then the larger of the M and
    N tiles (not below 16), until each thread's FMAs per K step are within
    `work`: the rule that keeps a dot without tensor cores out of local memory."""
    while c.block_m * c.block_n * c.block_k > work * 32 * c.num_warps:
        if c.num_warps < 8:
            c = c._replace(num_warps=8)
        elif c.block_k > 16:
            c = c._replace(block_k=c.block_k // 2)
        elif max(c.block_m, c.block_n) > 16:
            side = "block_m" if c.block_m >= c.block_n else "block_n"
            c = c._replace(**{side: getattr(c, side) // 2})
        else:
            break
    return c


def _programs(m: int, n: int, bm: int, bn: int) -> int:
    return -(-int(m) // bm) * -(-int(n) // bn)


#: K tile of an implicit-GEMM conv. Each element of its input tile is a gather
#: (its own tap address and bounds test), and the fp32 dot keeps every row and
#: column a thread touches in registers, so a conv wants a short K tile.
CONV_BLOCK_K = 16


@cache
def conv_warps(m: int, n: int) -> int:
    """8 warps for output tiles of 1024 elements and more. Measured on sm_90
    over the backward convs of lenet, resnet and a 64-channel model (B=8): at
    4 warps resnet's weight gradient (K = B*OH*OW, batch-norm prologue) took
    255 registers and spilled with BLOCK_K 32, a lenet input gradient spilled
    8 bytes with BLOCK_K 16; at 8 warps and BLOCK_K 16 none spills, and the
    most any takes is 101 registers."""
    return 8 if tile(m) * tile(n) >= 1024 else 4


@cache
def attention_rows(t: int) -> int:
    """Query rows per program: 32 keeps q, the fp32 accumulator and the score
    tile of a 128-wide head in registers without spilling on sm_90."""
    return min(32, max(16, next_pow2(t)))


@cache
def attention_cols(t: int) -> int:
    """Keys per streamed tile."""
    return min(32, max(16, next_pow2(t)))


# The backward kernels run 8 warps (fp32, sm_90, no spills at head dims 8 to
# 128). The dq kernel tiles like the forward one; the dk/dv kernel holds k, v
# and two accumulators of [keys, head dim] besides each step's tiles, so its
# tiles shrink with the head: 32 x 32 up to 32, 16 keys x 16 queries at 64,
# 16 keys x 8 queries at 128 (fp32 dots need K >= 8).
ATTENTION_BWD_WARPS = 8


@cache
def dkdv_keys(t: int, d: int) -> int:
    """Keys per program of the dk/dv kernel."""
    return 16 if head_dim(d) >= 64 else attention_cols(t)


@cache
def dkdv_queries(t: int, d: int) -> int:
    """Query rows per step of the dk/dv kernel."""
    return 8 if head_dim(d) >= 128 else 16 if head_dim(d) >= 64 else attention_rows(t)


@cache
def attention_warps(d: int) -> int:
    """8 warps for heads of 64 and more: q, the accumulator and the score tile
    then fit in registers without spilling (fp32, sm_90)."""
    return 8 if head_dim(d) >= 64 else 4


@cache
def head_dim(d: int) -> int:
    """The head dim padded to a power of two (>= 16 for tl.dot)."""
    return max(16, next_pow2(d))


@cache
def gates(m: int, n: int, k: int, count: int, itemsize: int = 4, mma: bool = False) -> Config:
    """A gated GEMM ([m, k] x [k, count * n], e.g. an LSTM's four gates) keeps
    one accumulator per gate: the gates together get the tile of one matmul
    as wide as all of them, each its share of the columns (at least 16; M
    shrinks where that floor would widen the tile). Measured on sm_90 (LSTM
    gates, B=100, fp32 ieee): 32 x 32 x 32 per gate at 4 warps took 234
    registers, 64 x 32 x 32 spilled 840 bytes; shares of a 64 x 64 x 16 tile
    take 54-80."""
    c = matmul(m, n * count, k, itemsize, mma)
    side = max(16, min(tile(n), _floor_pow2(c.block_n // count)))   # 3 gates: not a third
    rows = max(16, min(c.block_m, _floor_pow2(c.block_m * c.block_n // (side * count))))
    return c._replace(block_m=rows, block_n=side)


def _floor_pow2(n: int) -> int:
    """The largest power of two <= n (tiles are powers of two), 1 for n < 1."""
    return 1 << max(0, int(n).bit_length() - 1)


#: Elements per program of a multi-tensor (foreach) kernel.
FOREACH_BLOCK = 1024


@cache
def foreach_programs(numels: tuple[int, ...], block: int) -> int:
    """Programs of a multi-tensor kernel: each group's elements in whole blocks."""
    return sum(-(-int(n) // block) for n in numels)


def foreach_table(rows: list[list], block: int, counter: bool = False):  # noqa: ANN201
    """A multi-tensor kernel's table (codegen/foreach.py), a flat int64 tensor:
    per group its first program, its element count and each tensor's offset in
    elements from the same column's group-0 tensor; then, with counter=True,
    a zero the programs count themselves in as they finish."""
    import torch
    bases = rows[0]
    table, first = [], 0
    for row in rows:
        offsets = []
        for t, base in zip(row, bases):
            if not t.is_contiguous() or t.dtype != base.dtype:
                raise ValueError("foreach tensors must be contiguous, one dtype per column")
            offsets.append((t.data_ptr() - base.data_ptr()) // t.element_size())
        table += [first, row[0].numel(), *offsets]
        first += -(-row[0].numel() // block)
    return torch.tensor(table + [0] * counter, dtype=torch.int64, device=bases[0].device)


def int32_offsets(sizes: tuple[int, ...]) -> None:
    """Refuse a launch whose kernels index with int32 a buffer that outgrew it
    (their sizes were symbolic when they were generated)."""
    big = max(sizes, default=0)
    if big > 2**31 - 1:
        from ember.ir.loc import DSLError
        raise DSLError(f"a tensor of {big} elements is larger than 32-bit offsets reach "
                       f"(2**31 - 1); pass its sizes with --dims so the kernels that touch it "
                       f"are generated with 64-bit offsets")
