"""AOT compilation for sm_90 without a GPU: resources of real kernels, and errors that surface.

The kernels are written into tmp .py files (``@triton.jit`` needs a real file); this
process runs with TRITON_INTERPRET=1 (conftest), so the compiles prove that the worker
subprocess imports them as real JITFunctions.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

pytest.importorskip("triton")

from ember.codegen.aot import (  # noqa: E402 - after the importorskip on purpose
    SHARED_LIMIT,
    AOTError,
    KernelResources,
    check_resources,
    compile_kernel,
    compile_kernels,
)

KERNELS = '''
import triton
import triton.language as tl


@triton.jit
def vec_add(X, Y, Z, N, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < N
    x = tl.load(X + offs, mask=mask)
    y = tl.load(Y + offs, mask=mask)
    tl.store(Z + offs, x + y, mask=mask)


@triton.jit
def matmul(A, B, C, M, N, K, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr,
           PRECISION: tl.constexpr):
    rm = tl.program_id(0) * BM + tl.arange(0, BM)
    rn = tl.program_id(1) * BN + tl.arange(0, BN)
    acc = tl.zeros((BM, BN), dtype=tl.float32)
    for k0 in range(0, K, BK):
        rk = k0 + tl.arange(0, BK)
        a = tl.load(A + rm[:, None] * K + rk[None, :],
                    mask=(rm[:, None] < M) & (rk[None, :] < K), other=0.0)
        b = tl.load(B + rk[:, None] * N + rn[None, :],
                    mask=(rk[:, None] < K) & (rn[None, :] < N), other=0.0)
        acc = tl.dot(a, b, acc, input_precision=PRECISION)
    tl.store(C + rm[:, None] * N + rn[None, :], acc,
             mask=(rm[:, None] < M) & (rn[None, :] < N))


@triton.jit
def with_break(X, N, BLOCK: tl.constexpr):
    acc = tl.zeros((BLOCK,), dtype=tl.float32)
    for i in range(N):
        if i > 3:
            break
        acc += tl.load(X + i * BLOCK + tl.arange(0, BLOCK))
    tl.store(X + tl.arange(0, BLOCK), acc)
'''

ADD_SIG = {"X": "*fp32", "Y": "*fp32", "Z": "*fp32", "N": "i32", "BLOCK": "constexpr"}
MM_SIG = {
    "A": "*fp32", "B": "*fp32", "C": "*fp32", "M": "i32", "N": "i32", "K": "i32",
    "BM": "constexpr", "BN": "constexpr", "BK": "constexpr", "PRECISION": "constexpr",
}


@pytest.fixture(scope="module")
def kernel_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("aot") / "kernels.py"
    path.write_text(textwrap.dedent(KERNELS))
    return path


def mm_job(path: Path, bm: int, bn: int, bk: int, precision: str, **opts: int) -> dict:
    consts = {"BM": bm, "BN": bn, "BK": bk, "PRECISION": precision}
    return dict(path=path, fn_name="matmul", signature=MM_SIG, constexprs=consts, **opts)


def test_batch_compiles_add_and_dot_for_sm90(kernel_file: Path) -> None:
    add = dict(path=kernel_file, fn_name="vec_add", signature=ADD_SIG,
               constexprs={"BLOCK": 1024})
    add_r, mm_r = compile_kernels([add, mm_job(kernel_file, 32, 32, 16, "tf32")])
    assert (add_r.name, mm_r.name) == ("vec_add", "matmul")
    for r in (add_r, mm_r):
        assert r.registers > 0
        assert r.spills == 0
        assert r.shared_bytes >= 0
        assert r.num_warps == 4
        assert check_resources(r) == []
    assert mm_r.shared_bytes > 0  # pipelined A/B tiles are staged through shared memory


def test_break_raises_aot_error_naming_kernel(kernel_file: Path) -> None:
    with pytest.raises(AOTError) as info:
        compile_kernel(kernel_file, "with_break", {"X": "*fp32", "N": "i32",
                                                   "BLOCK": "constexpr"}, {"BLOCK": 64})
    assert info.value.kernel == "with_break"
    assert "Break" in info.value.message
    assert "with_break" in str(info.value)


def test_failure_in_batch_names_the_failing_kernel(kernel_file: Path) -> None:
    good = dict(path=kernel_file, fn_name="vec_add", signature=ADD_SIG,
                constexprs={"BLOCK": 128})
    bad = dict(path=kernel_file, fn_name="missing_kernel", signature=ADD_SIG,
               constexprs={"BLOCK": 128})
    with pytest.raises(AOTError) as info:
        compile_kernels([good, bad])
    assert info.value.kernel == "missing_kernel"
    assert "missing_kernel" in info.value.message


def test_constexpr_mismatch_is_rejected_before_compiling(kernel_file: Path) -> None:
    with pytest.raises(AOTError, match="BLOCK"):
        compile_kernel(kernel_file, "vec_add", ADD_SIG, {})


@pytest.mark.slow
def test_huge_tiles_are_flagged(kernel_file: Path) -> None:
    # 256x256x64 ieee takes ~2 min in ptxas; these two take a few seconds and still fail:
    # ieee fp32 dot is an FMA loop that spills at 128x128, and 3 stages of 128x256x64
    # fp32 tiles need 288 KiB of shared memory.
    spilling, too_big = compile_kernels([
        mm_job(kernel_file, 128, 128, 32, "ieee", num_stages=3),
        mm_job(kernel_file, 128, 256, 64, "tf32", num_stages=3, num_warps=8),
    ])
    assert spilling.spills > 0
    assert any("spill" in p for p in check_resources(spilling))
    assert too_big.shared_bytes > SHARED_LIMIT
    assert any("shared memory" in p for p in check_resources(too_big))


def test_check_resources_register_budget() -> None:
    r = KernelResources(name="k", registers=255, spills=0, shared_bytes=0, num_warps=16)
    (problem,) = check_resources(r)
    assert "registers" in problem and "65536" in problem
    ok = KernelResources(name="k", registers=128, spills=0, shared_bytes=SHARED_LIMIT,
                         num_warps=16)
    assert check_resources(ok) == []
