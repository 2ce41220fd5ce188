"""On a CUDA GPU: every model compiled by Triton for the real device (not the
interpreter) matches the oracle. Skipped where there is no GPU, as in CI; the
interpreter runs of the same kernels are in test_triton_models.py."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from util import MODEL_NAMES, MODELS, ROOT

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


@pytest.mark.parametrize("precision", ["ieee", "tf32"])
@pytest.mark.parametrize("model", MODEL_NAMES)
def test_model_on_gpu_matches_oracle(model: str, precision: str) -> None:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    run = subprocess.run(
        [sys.executable, "-m", "ember", "run", str(MODELS / f"{model}.ember"), "--backend",
         "triton", "--check", "--dot-precision", precision, "--dims", "B=8,T=32"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "backend: triton" in run.stdout
