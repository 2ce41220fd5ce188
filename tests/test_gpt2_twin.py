"""examples/gpt2_small.ember (GPT-2 small's dimensions: 12 blocks 768 wide, 12
heads, 50257 tokens, 1024 positions) against the GPT twin of
tests/test_models_vs_torch.py at those dimensions, in float32 at B=1, T=8.

float32, not float64: 163M parameters are 1.3 GB in float64 per copy. Both
sides sum 768- and 3072-long dot products in float32 in different orders
through 12 residual blocks, so they agree to rounding: 1e-4 relative to the
largest logit (measured ~1e-6), far below any semantic difference."""

from __future__ import annotations

import numpy as np
import pytest
from test_models_vs_torch import TorchGPT, rel_err
from util import ROOT

from ember import api

torch = pytest.importorskip("torch")


class TorchGPT2Small(TorchGPT):
    V, D, HEADS, LAYERS, MAX_T = 50257, 768, 12, 12, 1024


@pytest.mark.slow
def test_gpt2_small_matches_its_torch_twin() -> None:
    program = api.parse_file(ROOT / "examples/gpt2_small.ember")
    params = api.init_model_params(program, seed=0)
    m = TorchGPT2Small()
    m.load_state_dict({k: torch.from_numpy(v) for k, v in params.items()}, strict=True)
    ids = np.random.default_rng(0).integers(0, 50257, (1, 8)).astype(np.int32)
    targets = np.roll(ids, -1, axis=1)
    g = api.compile_program(program, "loss")
    loss = api.run(g, {"ids": ids, "targets": targets}, params)["loss"]
    with torch.no_grad():
        logits = m(torch.from_numpy(ids))
        ref = torch.nn.functional.cross_entropy(logits.reshape(-1, 50257),
                                                torch.from_numpy(targets).reshape(-1).long())
    assert rel_err(np.asarray(loss), ref.numpy()) < 1e-4
    fwd = api.run(api.compile_program(program, "forward"), {"ids": ids}, params)["forward"]
    assert rel_err(fwd, logits.numpy()) < 1e-4
