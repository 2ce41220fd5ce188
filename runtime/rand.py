"""NumPy replica of Triton's counter-based RNG (``tl.randint``, ``tl.rand``), bitwise.

Algorithm (triton/language/random.py, Triton 3.x):

* Counter: ``c0`` = offset truncated to uint32; ``c1`` = ``offset >> 32`` only when
  the offset tensor is 64-bit (else 0); ``c2 = c3 = 0``.
* Key: the seed is cast to uint64 (sign-extending a signed seed) and split into
  ``k0`` = low 32 bits, ``k1`` = high 32 bits.
* Philox 4x32, 10 rounds.  Per round, with ``A = 0xD2511F53``, ``B = 0xCD9E8D57``::

      c0, c1, c2, c3 = (umulhi(B, c2) ^ c1 ^ k0, B * c2,   # products mod 2**32
                        umulhi(A, c0) ^ c3 ^ k1, A * c0)
      k0 += 0x9E3779B9; k1 += 0xBB67AE85                   # mod 2**32

  ``tl.randint`` returns the final ``c0`` (``randint4x`` also returns c1..c3).
* ``tl.rand`` maps that uint32 ``x`` to float32: reinterpret as int32, fold
  negatives with ``x = ~x`` (so 0 <= x < 2**31), then
  ``float32(x) * float32(4.6566127342e-10)``, both steps rounding to nearest in
  float32.  The scale rounds to 2**-31 * (1 - 2**-24), the largest float32 whose
  product with float32(2**31 - 1) == 2**31 stays below 1, so the result is in [0, 1).

Seed typing: Triton types a Python int kernel argument as i32 if it fits, else i64
(u64 from 2**63), and specialises the value 1 to a constexpr (which also becomes
int32).  As the seed is widened to uint64 with sign extension in every case, the keys
are simply ``seed mod 2**64`` split into two words: seeds in [0, 2**32) give
``k1 = 0``, and a negative seed such as -1 gives ``k1 = 0xFFFFFFFF``.

Dropout rule (shared by the oracle and generated Triton code): the element with
row-major flat index ``i`` in the output is kept iff ``tl.rand(seed, i) >= p``, so it
is kept with probability ``1 - p``.  See :func:`dropout_keep`.
"""

from __future__ import annotations

import math
import zlib

import numpy as np

_N_ROUNDS = 10
_KEY_A = np.uint64(0x9E3779B9)
_KEY_B = np.uint64(0xBB67AE85)
_ROUND_A = np.uint64(0xD2511F53)
_ROUND_B = np.uint64(0xCD9E8D57)
_MASK32 = np.uint64(0xFFFFFFFF)
_SHIFT32 = np.uint64(32)
# Triton's uint_to_uniform_float scale for 32-bit inputs, as the float32 it becomes.
_SCALE = np.float32(4.6566127342e-10)


def _split_seed(seed: int) -> tuple[np.uint64, np.uint64]:
    """Keys (k0, k1): low / high word of the seed's 64-bit two's-complement bits."""
    seed = int(seed)
    if not -(2**63) <= seed < 2**64:
        raise ValueError(f"seed {seed} does not fit in 64 bits, as Triton requires")
    bits = seed & (2**64 - 1)  # same as Triton's sign-extending cast of i32/i64 to u64
    return np.uint64(bits & 0xFFFFFFFF), np.uint64(bits >> 32)


def _split_offsets(offsets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Counters (c0, c1): uint64 arrays holding 32-bit words, per the offset dtype.

    Triton uses the high word only for 64-bit offset tensors; narrower ones (the
    usual int32 ``tl.arange`` + ``pid * BLOCK``) wrap to uint32 and leave ``c1 = 0``.
    """
    offsets = np.asarray(offsets)
    if offsets.dtype.kind not in "iu":
        raise TypeError(f"offsets must be integers, got {offsets.dtype}")
    if offsets.dtype.itemsize == 8:
        # Two's-complement bits: >> 32 then equals Triton's arithmetic shift + trunc.
        bits = offsets.view(np.uint64)
        return bits & _MASK32, bits >> _SHIFT32
    lo = offsets.astype(np.uint32).astype(np.uint64)  # astype wraps negatives mod 2**32
    return lo, np.zeros_like(lo)


def philox_uint32(seed: int, offsets: np.ndarray) -> np.ndarray:
    """Return ``tl.randint(seed, offsets)`` as uint32, same shape as ``offsets``."""
    k0, k1 = _split_seed(seed)
    c0, c1 = _split_offsets(offsets)
    c2 = np.zeros_like(c0)
    c3 = np.zeros_like(c0)
    # Words are uint64 holding 32-bit values, so a 32x32 product is exact: its high
    # word is umulhi and its low word the wrapping uint32 product.
    for _ in range(_N_ROUNDS):  # loop over rounds, not elements
        p0 = _ROUND_A * c0
        p2 = _ROUND_B * c2
        c0, c1, c2, c3 = (
            (p2 >> _SHIFT32) ^ c1 ^ k0,
            p2 & _MASK32,
            (p0 >> _SHIFT32) ^ c3 ^ k1,
            p0 & _MASK32,
        )
        k0 = (k0 + _KEY_A) & _MASK32
        k1 = (k1 + _KEY_B) & _MASK32
    return c0.astype(np.uint32)


def uniform(seed: int, offsets: np.ndarray) -> np.ndarray:
    """Return ``tl.rand(seed, offsets)``: float32 in [0, 1), shaped like ``offsets``."""
    x = philox_uint32(seed, offsets).view(np.int32)
    x = np.where(x < 0, ~x, x)
    # Cast explicitly: NumPy 2 promotes int32 array * float32 scalar to float64.
    return x.astype(np.float32) * _SCALE


def dropout_keep(seed: int, shape: tuple[int, ...], p: float) -> np.ndarray:
    """Bool keep-mask of ``shape``: kept iff ``uniform(seed, flat_index) >= p``.

    ``flat_index`` is the element's row-major flat index in the output (int32, as in
    a generated kernel's ``tl.rand(seed, flat_index) >= p``), so each element is kept
    with probability ``1 - p``; ``p`` is compared as float32, as in the kernel.
    """
    n = math.prod(shape)
    idx = np.arange(n, dtype=np.int32 if n <= 2**31 else np.int64).reshape(shape)
    return uniform(seed, idx) >= np.float32(p)


def stream_seed(seed: int, stream: str, steps: tuple[int, ...] = ()) -> int:
    """The Philox seed of one random stream (one dropout call site) in a run.

    Each RAND node names its stream; mixing the run's seed with a CRC of that
    name, and with the counters of the loops it sits in, gives every dropout
    site (and every loop step) its own mask while staying reproducible. The
    Triton launcher computes the same value on the host and passes it to
    `tl.rand`, so oracle and kernels draw identical masks.
    """
    key = seed * 1_000_003 + zlib.crc32(stream.encode())
    for step in steps:
        key = key * 7_919 + int(step) + 1
    return key % (2**31 - 1)
