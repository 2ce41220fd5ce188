"""ember.runtime.rand must match Triton's tl.rand / tl.randint bit for bit."""

import os

# Must precede the @triton.jit below (the decorator reads it), and any ember import.
os.environ.setdefault("TRITON_INTERPRET", "1")

import numpy as np
import pytest
import torch
import triton
import triton.language as tl

# isort: split
from ember.runtime.rand import dropout_keep, philox_uint32, uniform


@triton.jit
def _rand_kernel(seed, offs_ptr, rand_ptr, int_ptr, n, BLOCK: tl.constexpr):
    i = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = i < n
    offs = tl.load(offs_ptr + i, mask=mask, other=0)
    tl.store(rand_ptr + i, tl.rand(seed, offs), mask=mask)
    tl.store(int_ptr + i, tl.randint(seed, offs), mask=mask)


def _triton_rand(seed: int, offsets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    offs = torch.from_numpy(np.ascontiguousarray(offsets))
    n = offs.numel()
    rand = torch.empty(n, dtype=torch.float32)
    ints = torch.empty(n, dtype=torch.int32)
    block = 128
    _rand_kernel[(triton.cdiv(n, block),)](seed, offs, rand, ints, n, BLOCK=block)
    return rand.numpy(), ints.numpy().view(np.uint32)


SEEDS = [0, 1, 12345, 2**31 - 1, 2**31, 2**32 + 12345, 0xDEADBEEF_CAFEF00D, -1, -7]


def _check(seed: int, offsets: np.ndarray) -> None:
    rand_t, int_t = _triton_rand(seed, offsets)
    ints = philox_uint32(seed, offsets)
    rand = uniform(seed, offsets)
    assert ints.dtype == np.uint32 and rand.dtype == np.float32
    assert np.array_equal(ints, int_t)
    assert np.array_equal(rand.view(np.uint32), rand_t.view(np.uint32))


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("n", [1, 7, 1000])
def test_matches_triton_contiguous(seed: int, n: int) -> None:
    _check(seed, np.arange(n, dtype=np.int32))


@pytest.mark.parametrize("seed", SEEDS)
def test_matches_triton_scattered_offsets(seed: int) -> None:
    rng = np.random.default_rng(0)
    offs = np.concatenate(
        [
            rng.integers(-(2**31), 2**31, size=300, dtype=np.int64).astype(np.int32),
            np.array([0, 2**31 - 1, -(2**31), -1, 3, 3], dtype=np.int32),
            np.arange(0, 5000, 37, dtype=np.int32),
        ]
    )
    _check(seed, offs)


@pytest.mark.parametrize("seed", [0, 12345, 2**32 + 12345])
def test_matches_triton_int64_offsets(seed: int) -> None:
    # 64-bit offsets feed their high word into the second Philox counter.
    offs = np.array([0, 5, 2**32, 2**32 + 5, 2**40 + 3, -1, -(2**35)], dtype=np.int64)
    _check(seed, offs)


def test_shape_preserved_and_range() -> None:
    offs = np.arange(24, dtype=np.int32).reshape(2, 3, 4)
    u = uniform(7, offs)
    assert u.shape == (2, 3, 4) and philox_uint32(7, offs).shape == (2, 3, 4)
    big = uniform(3, np.arange(200_000, dtype=np.int32))
    assert big.min() >= 0.0 and big.max() < 1.0


def test_seed_out_of_range() -> None:
    with pytest.raises(ValueError):
        philox_uint32(2**64, np.arange(3, dtype=np.int32))


@pytest.mark.parametrize("p", [0.1, 0.5])
def test_dropout_keep_fraction(p: float) -> None:
    n = 100_000
    keep = dropout_keep(42, (n,), p)
    assert keep.dtype == np.bool_ and keep.shape == (n,)
    # Binomial std is <= 0.0016 at n=1e5; allow ~5 sigma.
    assert abs(keep.mean() - (1 - p)) < 0.008


def test_dropout_keep_rule_and_determinism() -> None:
    shape = (3, 5, 7)
    a = dropout_keep(9, shape, 0.3)
    assert a.shape == shape
    assert np.array_equal(a, dropout_keep(9, shape, 0.3))
    assert not np.array_equal(a, dropout_keep(10, shape, 0.3))
    flat = uniform(9, np.arange(105, dtype=np.int32)) >= np.float32(0.3)
    assert np.array_equal(a.reshape(-1), flat)
    assert dropout_keep(1, (4, 4), 0.0).all()
    assert not dropout_keep(1, (4, 4), 1.0).any()
