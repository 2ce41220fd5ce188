"""Running a graph as generated Triton kernels.

On a machine with a CUDA GPU the kernels run on CUDA tensors; otherwise they
run in Triton's interpreter on CPU tensors. TRITON_INTERPRET is read when a
@triton.jit decorator executes, so it is set before a generated module is
imported. Generated modules are written to files (Triton needs kernel source
in a real file) and imported under a name derived from their content.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path
from types import ModuleType

import numpy as np

from ember.codegen.module import Module, emit_triton
from ember.ir.graph import Graph
from ember.ir.loc import DSLError

from .oracle import bind_input
from .pool import Pool


def has_gpu() -> bool:
    try:
        import torch
        return bool(torch.cuda.is_available())
    except ImportError:
        return False


def device() -> str:
    return "cuda" if has_gpu() else "cpu"


def load_module(source: str, directory: Path | None = None) -> ModuleType:
    """Write generated source to a file and import it."""
    if not has_gpu():
        os.environ["TRITON_INTERPRET"] = "1"
    os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    digest = hashlib.sha256(source.encode()).hexdigest()[:16]
    name = f"ember_generated_{digest}"
    if name in sys.modules:
        return sys.modules[name]
    root = directory or Path(tempfile.gettempdir()) / "ember_kernels"
    root.mkdir(parents=True, exist_ok=True)
    path = root / f"{name}.py"
    if not path.exists() or path.read_text() != source:
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(source)
        os.replace(tmp, path)
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


class TritonProgram:
    """A graph compiled to Triton: call it with NumPy inputs and parameters."""

    def __init__(self, g: Graph, fused: bool = True, precision: str = "ieee"):
        self.graph = g
        self.module: Module = emit_triton(g, fused=fused, precision=precision)
        self.py = load_module(self.module.source)

    def __call__(self, inputs: Mapping[str, np.ndarray], params: Mapping[str, np.ndarray],
                 seed: int = 0, dims: Mapping[str, int] | None = None,
                 pool: Pool | None = None) -> dict[str, np.ndarray]:
        import torch
        env = dict(dims or {})
        for i in self.graph.inputs:
            n = self.graph.nodes[i]
            bind_input(n, inputs[n.attrs["name"]], env)
        dev = device()
        t_in = {k: torch.from_numpy(np.ascontiguousarray(v)).to(dev) for k, v in inputs.items()}
        t_par = {k: torch.from_numpy(np.ascontiguousarray(v)).to(dev) for k, v in params.items()}
        unbound = sorted(set(self.module.symbols) - set(env))
        if unbound:
            raise DSLError(f"dimension {unbound[0]} is not bound by the inputs; pass --dims "
                           f"{unbound[0]}=N")
        outs = self.py.launch(t_in, t_par, env, seed, pool or Pool(dev))
        return {k: v.cpu().numpy() for k, v in outs.items()}
