"""Issue 11's acceptance, without a GPU: GPT-2 small's loss (examples/
gpt2_small.ember at B=8, T=1024) in bf16-mixed compiles for sm_90 with the
launch configuration, every kernel without spills and within shared memory,
and every kernel with a dot (matmul, attention) uses tensor cores (mma/wgmma
in its PTX). About 20 s with Triton's cache warm, a minute or two cold."""

from __future__ import annotations

from pathlib import Path

import pytest
from util import ROOT

from ember import api
from ember.codegen import aot
from ember.codegen.module import emit_triton
from ember.kernel_cmds import aot_job

pytest.importorskip("triton")

DIMS = {"B": 8, "T": 1024}
DOT_KINDS = {"matmul", "attention", "attention_dkdv", "attention_dq", "gates", "conv"}


@pytest.mark.slow
def test_gpt2_small_loss_bf16_mixed_compiles_for_sm90_on_tensor_cores(tmp_path: Path) -> None:
    g = api.compile_file(ROOT / "examples/gpt2_small.ember", "loss", dims=DIMS,
                         precision="bf16-mixed")
    mod = emit_triton(g)
    path = tmp_path / "gpt2.py"
    path.write_text(mod.source)
    resources = aot.compile_kernels([aot_job(code, path, DIMS) for code in mod.kernels])
    assert [p for r in resources for p in aot.check_resources(r)] == []
    dots = [(code.name, r.tensor_cores) for code, r in zip(mod.kernels, resources)
            if code.kind in DOT_KINDS or "matmul" in code.name]
    assert len(dots) >= 7 and all(tc for _, tc in dots), dots
    # the artifacts are where the report says, under the kernel's name
    assert all(Path(r.artifacts, f"{r.name}.ptx").exists() for r in resources)
