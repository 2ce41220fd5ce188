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


def compile_src(src: str, entry: str = "forward", float64: bool = True, train: bool = False,
                stage: str = "opt", file: str = "test.ember") -> Graph:
    return api.compile_program(parse(src, file), entry, stage, Options(train, float64))


def run_src(src: str, inputs: dict[str, np.ndarray], params: dict[str, np.ndarray] | None = None,
            entry: str = "forward", seed: int = 0, **kw: Any) -> list[np.ndarray]:
    """Compile `src` (float64 by default) and run it on the oracle."""
    g = compile_src(src, entry, **kw)
    return list(api.run(g, inputs, params or {}, seed).values())
