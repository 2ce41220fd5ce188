"""Block-size heuristics (no autotuning without a GPU): powers of two from the
runtime sizes, so one generated kernel serves every batch size and sequence
length. The same functions run in the launcher and in ahead-of-time compiles."""

from __future__ import annotations

from ember.ir.loc import DSLError


def next_pow2(n: int) -> int:
    return 1 << max(0, (int(n) - 1).bit_length())


def pointwise(numel: int) -> int:
    """One program covers up to 1024 elements (fewer programs also keep the
    interpreter fast)."""
    return min(1024, max(16, next_pow2(numel)))


def reduce_cols(n: int) -> int:
    """A persistent reduction: the whole row in one block."""
    if n > 16384:
        raise DSLError(f"the Triton backend reduces rows of at most 16384 elements; this "
                       f"model reduces {n} (use --backend numpy)")
    return max(2, next_pow2(n))


def reduce_rows(rows: int, cols: int) -> int:
    """Rows per program: a tile of at most 4096 elements, or one row when a
    row alone is longer."""
    return max(1, min(next_pow2(rows), 4096 // reduce_cols(cols)))


def tile(n: int) -> int:
    """M or N tile of a dot: 16 (the tensor-core minimum) to 64."""
    return min(64, max(16, next_pow2(n)))


def tile_k(k: int) -> int:
    """K tile: 16 or 32 (sm_90 needs K >= 8 for fp32, >= 16 for halves)."""
    return min(32, max(16, next_pow2(k)))


def attention_rows(t: int) -> int:
    """Query rows per program: 32 keeps q, the fp32 accumulator and the score
    tile of a 128-wide head in registers without spilling on sm_90."""
    return min(32, max(16, next_pow2(t)))


def attention_cols(t: int) -> int:
    """Keys per streamed tile."""
    return min(32, max(16, next_pow2(t)))


def attention_warps(d: int) -> int:
    """8 warps for heads of 64 and more: q, the accumulator and the score tile
    then fit in registers without spilling (fp32, sm_90)."""
    return 8 if head_dim(d) >= 64 else 4


def head_dim(d: int) -> int:
    """The head dim padded to a power of two (>= 16 for tl.dot)."""
    return max(16, next_pow2(d))


def gate_tile(n: int) -> int:
    """M or N tile of a gated GEMM: one fp32 accumulator per gate lives in
    registers, so tiles stay at most 32 x 32 (4 gates: 32 registers/thread)."""
    return min(32, max(16, next_pow2(n)))
