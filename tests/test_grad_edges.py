"""Edge cases of --grad found in review: an empty scan through the kernels,
the error for a non-scalar entry located at the entry, gradient outputs named
in the printed IR."""

from __future__ import annotations

import subprocess
import sys

from util import ROOT

from ember import api
from ember.ir.printer import print_graph


def _ember(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ember", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)


def test_zero_step_scan_gradients_through_the_kernels() -> None:
    """T=0 bound at compile time: the stacked per-step values are empty."""
    r = _ember("run", "models/lstm.ember", "--entry", "loss", "--grad", "--dims", "B=2,T=0",
               "--backend", "triton", "--check")
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.count(" ok") == 6  # the loss and five gradients


def test_non_scalar_entry_error_points_at_the_entry() -> None:
    r = _ember("run", "models/mlp.ember", "--grad", "--dims", "B=2")
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert r.stderr.startswith("models/mlp.ember:33:7: error: gradients need an entry whose "
                               "first output is a float scalar; 'Mlp.forward' returns")
    assert "def forward(x: f32[B, 64])" in r.stderr


def test_printed_ir_names_each_gradient() -> None:
    g = api.compile_file(ROOT / "models" / "mlp.ember", entry="loss", grad=True)
    ret = print_graph(g).splitlines()[-2]
    for name in ("hidden.w", "hidden.bn.weight", "hidden.bn.bias", "out.w", "out.b"):
        assert f"grad.{name}=%" in ret


def test_max_pool_grad_never_routes_to_padding() -> None:
    """A padded window whose real values are all -inf: the gradient goes to its
    first real position, as torch (padding counts as -inf but is never chosen)."""
    import numpy as np
    import torch

    from ember.runtime.nn_ops import max_pool2d_grad
    x = np.full((1, 2, 3, 3), -np.inf)
    x[0, :, 2, 2] = 1.0
    dy = np.arange(8, dtype=np.float64).reshape(1, 2, 2, 2) + 1
    got = max_pool2d_grad(x, dy, (2, 2), (2, 2), (1, 1))
    t = torch.tensor(x, requires_grad=True)
    torch.nn.functional.max_pool2d(t, 2, 2, 1).backward(torch.tensor(dy))
    assert t.grad is not None
    np.testing.assert_array_equal(got, t.grad.numpy())

