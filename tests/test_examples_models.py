"""The models of examples/ written as a PyTorch user would (a GRU tagger, a
bidirectional LSTM, a VGG-style CNN) against torch's own modules.

The twins are torch.nn.GRU, torch.nn.LSTM(bidirectional=True) and Conv2d /
max_pool2d, loaded from Ember's parameters (torch keeps recurrent weights as
[4H, in], Ember as [in, 4H]: transposed on the way). Checked in float64 on the
oracle, at two batch sizes and sequence lengths from one compiled graph:
forward and loss to 1e-10, and every parameter's gradient (`--grad`) to 1e-9
of its largest torch value (the harness of tests/test_grad_models.py). The
bidirectional LSTM (per-step outputs, a reversed read, torch's two-bias gates)
also runs its loss and gradients through the generated Triton kernels (the
interpreter here) against the oracle in float32 (`ember.backends.tolerance`:
1e-4), with guarded buffers whose canaries must survive.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cache

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from util import ROOT, perturb

from ember import api
from ember.backends import tolerance
from ember.ir.graph import Graph
from ember.lang.emitter import Options
from ember.runtime.pool import GuardedPool

EXAMPLES = ROOT / "examples"
F64 = Options(False, True)
SIZES = [(3, 4), (5, 2)]  # (B, T)


@cache
def graph(name: str, entry: str) -> Graph:
    return api.compile_program(api.parse_file(EXAMPLES / f"{name}.ember"), entry, options=F64,
                               grad=entry == "loss")


def params(name: str) -> dict[str, np.ndarray]:
    program = api.parse_file(EXAMPLES / f"{name}.ember")
    return perturb(api.init_model_params(program, F64, seed=1), seed=1)


# ---- twins: (params as torch tensors, inputs) -> (logits, loss) ------------------

def _recurrent(module: torch.nn.RNNBase, p: dict[str, torch.Tensor],
               prefixes: dict[str, str]) -> None:
    """Point torch's recurrent weights at Ember's (transposed) tensors."""
    for suffix, prefix in prefixes.items():
        for kind in ("ih", "hh"):
            setattr(module, f"weight_{kind}_l0{suffix}", p[f"{prefix}.w_{kind}"].T)
            setattr(module, f"bias_{kind}_l0{suffix}", p[f"{prefix}.b_{kind}"])


def gru_twin(p: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor
             ) -> tuple[torch.Tensor, torch.Tensor]:
    gru = torch.nn.GRU(6, 16, batch_first=True).double()
    del gru.weight_ih_l0, gru.weight_hh_l0, gru.bias_ih_l0, gru.bias_hh_l0
    _recurrent(gru, p, {"": "gru"})
    logits = gru(x)[0] @ p["w_out"] + p["b_out"]
    return logits, F.cross_entropy(logits.reshape(-1, 5), y.reshape(-1))


def bilstm_twin(p: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
    lstm = torch.nn.LSTM(6, 12, batch_first=True, bidirectional=True).double()
    for name in [n for n, _ in lstm.named_parameters()]:
        delattr(lstm, name)
    _recurrent(lstm, p, {"": "fwd", "_reverse": "bwd"})
    logits = lstm(x)[0] @ p["w_out"] + p["b_out"]
    return logits, F.cross_entropy(logits.reshape(-1, 3), y.reshape(-1))


def vgg_twin(p: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor
             ) -> tuple[torch.Tensor, torch.Tensor]:
    h = x
    for block in ("block1", "block2"):
        h = F.relu(F.conv2d(h, p[f"{block}.w1"], p[f"{block}.b1"], padding=1))
        h = F.max_pool2d(F.relu(F.conv2d(h, p[f"{block}.w2"], p[f"{block}.b2"], padding=1)), 2)
    logits = F.relu(h.flatten(1) @ p["fc1_w"] + p["fc1_b"]) @ p["fc2_w"] + p["fc2_b"]
    return logits, F.cross_entropy(logits, y)


Twin = Callable[[dict[str, torch.Tensor], torch.Tensor, torch.Tensor],
                tuple[torch.Tensor, torch.Tensor]]
TWINS: dict[str, Twin] = {"gru": gru_twin, "bilstm": bilstm_twin, "vgg": vgg_twin}


def inputs(name: str, batch: int, steps: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(batch * 10 + steps)
    if name == "vgg":
        return {"x": rng.standard_normal((batch, 1, 8, 8)), "y": rng.integers(0, 10, batch)}
    classes = 5 if name == "gru" else 3
    return {"x": rng.standard_normal((batch, steps, 6)),
            "y": rng.integers(0, classes, (batch, steps))}


def _torch(name: str, p: dict[str, np.ndarray], data: dict[str, np.ndarray]
           ) -> dict[str, np.ndarray]:
    tp = {k: torch.tensor(v, requires_grad=True) for k, v in p.items()}
    logits, loss = TWINS[name](tp, torch.tensor(data["x"]), torch.tensor(data["y"]))
    loss.backward()
    out = {"forward": logits, "loss": loss} | {f"grad.{k}": v.grad for k, v in tp.items()}
    return {k: v.detach().numpy() for k, v in out.items()}


@pytest.mark.parametrize("batch, steps", SIZES)
@pytest.mark.parametrize("name", sorted(TWINS))
def test_forward_loss_and_gradients_match_torch(name: str, batch: int, steps: int) -> None:
    p = params(name)
    data = inputs(name, batch, steps)
    ours = api.run(graph(name, "forward"), {"x": data["x"]}, p)
    ours |= api.run(graph(name, "loss"), {**data, "y": data["y"].astype(np.int32)}, p)
    want = _torch(name, p, data)
    assert set(ours) == set(want)
    for key, w in want.items():
        scale = np.abs(w).max() if key.startswith("grad.") else 1.0
        np.testing.assert_allclose(ours[key], w, rtol=0, atol=(1e-9 if scale != 1.0 else 1e-10)
                                   * scale, err_msg=f"{name} {key}")


def test_bilstm_kernels_match_the_oracle(tmp_path) -> None:
    pytest.importorskip("triton")
    from ember.runtime.cache import CodeCache
    from ember.runtime.triton_backend import TritonProgram
    g = api.compile_program(api.parse_file(EXAMPLES / "bilstm.ember"), "loss", grad=True)
    p = {k: v.astype(np.float32) for k, v in params("bilstm").items()}
    data = inputs("bilstm", 3, 3)
    data = {"x": data["x"].astype(np.float32), "y": data["y"].astype(np.int32)}
    pool = GuardedPool()
    got = TritonProgram(g, cache=CodeCache(tmp_path))(data, p, pool=pool)
    assert pool.check() == []
    atol, rtol = tolerance(np.dtype(np.float32), "ieee")
    want = api.run(g, data, p)
    assert set(got) == set(want)
    for key in want:
        np.testing.assert_allclose(got[key], want[key], atol=atol, rtol=rtol, err_msg=key)
