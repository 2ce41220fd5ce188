"""Offsets: int32 unless a kernel touches a buffer of more than 2**31 - 1
elements (then its program ids, and every offset derived from them, are int64);
a symbolic size is checked at launch (codegen/module.py, blocks.int32_offsets)."""

from __future__ import annotations

from pathlib import Path

import pytest

from ember import api
from ember.codegen import aot, blocks
from ember.codegen.module import emit_triton
from ember.ir.loc import DSLError
from ember.kernel_cmds import aot_job
from ember.lang.parser import parse

pytest.importorskip("triton")

SRC = "model M {{ def forward(x: f32[{rows}, 40000]) {{ return relu(x) * 2.0 }} }}"


def _module(rows: str, dims: dict[str, int] | None = None):
    return emit_triton(api.compile_program(parse(SRC.format(rows=rows), "m.ember"),
                                           dims=dims))


def test_a_kernel_over_more_than_2_31_elements_indexes_with_int64() -> None:
    big = _module("60000")          # 2.4e9 elements
    small = _module("50000")        # 2.0e9 < 2**31 - 1
    assert "tl.program_id(0).to(tl.int64)" in big.source
    assert "int64" not in small.kernels[0].source
    assert "int32_offsets" not in big.source


def test_symbolic_sizes_are_checked_at_launch() -> None:
    mod = _module("N")
    assert "blocks.int32_offsets((40000 * N,))" in mod.source
    blocks.int32_offsets((40000 * 50000,))
    with pytest.raises(DSLError, match="2400000000 elements.*--dims"):
        blocks.int32_offsets((40000 * 60000,))
    bound = _module("N", {"N": 60000})   # specialised: the kernel goes 64-bit instead
    assert "int64" in bound.source and "int32_offsets" not in bound.source


@pytest.mark.slow
def test_the_wide_kernel_compiles_for_sm90(tmp_path: Path) -> None:
    mod = _module("60000")
    path = tmp_path / "wide.py"
    path.write_text(mod.source)
    (r,) = aot.compile_kernels([aot_job(mod.kernels[0], path, {})])
    assert aot.check_resources(r) == []
