"""Small helpers shared by the tests: compile DSL text and run it on the oracle."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ember import api
from ember.ir.graph import Graph
from ember.lang.emitter import Options
from ember.lang.parser import parse

ROOT = Path(__file__).resolve().parent.parent
MODELS = ROOT / "models"
MODEL_NAMES = ("mlp", "lenet", "resnet", "lstm", "transformer")

# The LSTM time loop as models/lstm.ember writes it (x, h, c, w_ih, w_hh and b in
# scope): the spelling the gates pattern must recognize.
LSTM_STEPS = """    for t in range(T) {
      let gates = x[:, t, :] @ w_ih + h @ w_hh + b
      let i, f, g, o = split(gates, 4, axis=-1)
      c = sigmoid(f) * c + sigmoid(i) * tanh(g)
      h = sigmoid(o) * tanh(c)
    }
"""


def compile_src(src: str, entry: str = "forward", float64: bool = True, train: bool = False,
                stage: str = "opt", file: str = "test.ember") -> Graph:
    return api.compile_program(parse(src, file), entry, stage, Options(train, float64))


def run_src(src: str, inputs: dict[str, np.ndarray], params: dict[str, np.ndarray] | None = None,
            entry: str = "forward", seed: int = 0, **kw: Any) -> list[np.ndarray]:
    """Compile `src` (float64 by default) and run it on the oracle."""
    g = compile_src(src, entry, **kw)
    return list(api.run(g, inputs, params or {}, seed).values())


def perturb(params: dict[str, np.ndarray], seed: int) -> dict[str, np.ndarray]:
    """Replace constant-initialized parameters (zero biases, unit norm weights, zero
    running means) by random values so each is actually exercised; running
    variances stay positive."""
    rng = np.random.default_rng(seed + 1000)
    out = {}
    for name in sorted(params):
        v = params[name]
        if name.endswith("running_var"):
            v = rng.uniform(0.5, 2.0, v.shape)
        elif v.size and np.all(v == v.flat[0]):
            v = v + 0.2 * rng.standard_normal(v.shape)
        out[name] = v.astype(params[name].dtype)
    return out
