"""Running a graph as generated Triton kernels.

On a machine with a CUDA GPU the kernels run on CUDA tensors; otherwise they
run in Triton's interpreter on CPU tensors. TRITON_INTERPRET is read when a
@triton.jit decorator executes, so it is set before a generated module is
imported. Generated modules live as files in the code cache (Triton needs
kernel source in a real file) and are imported under a name from their key.
"""

from __future__ import annotations

import atexit
import hashlib
import importlib.util
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Mapping
from functools import cached_property, lru_cache
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from ember.codegen.module import Module, emit_triton
from ember.ir.graph import Graph
from ember.ir.loc import DSLError
from ember.ir.printer import print_graph

from .cache import CodeCache
from .files import printable
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


@lru_cache(maxsize=1)
def compiler_fingerprint() -> str:
    """A hash of the code generator's own source: a development build whose
    version string has not changed still never reuses stale kernels."""
    import ember.codegen
    import ember.passes
    digest = hashlib.sha256()
    for package in (ember.codegen, ember.passes):
        for path in sorted(Path(package.__file__).parent.glob("*.py")):
            digest.update(path.read_bytes())
    return digest.hexdigest()


def _select_mode() -> None:
    """Interpret kernels when there is no GPU. Must run before the first import
    of triton.language, whose own @jit helpers (tl.zeros, ...) take their mode
    from TRITON_INTERPRET at that moment."""
    if "triton.language" not in sys.modules:
        if not has_gpu():
            os.environ["TRITON_INTERPRET"] = "1"
        os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    if os.environ.get("TRITON_INTERPRET") == "1":
        from .interp_bf16 import patch
        patch()  # bf16 dots and casts as on the GPU


def load_module(path: Path, name: str) -> ModuleType:
    """Import a generated kernel module from its file (once per process)."""
    _select_mode()
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]  # a later import must not find the half-run module
        raise
    return module


class TritonProgram:
    """A graph compiled to Triton: call it with NumPy inputs and parameters.

    The generated module is cached on disk, keyed by the IR text (locations
    included: they appear in the kernels' comments), the options, and the
    Ember and Triton versions; a hit skips code generation entirely.
    """

    def __init__(self, g: Graph, fused: bool = True, precision: str = "ieee",
                 cache: CodeCache | None = None):
        self.graph, self.fused, self.precision = g, fused, precision
        cache = cache or CodeCache()
        key = cache.key(print_graph(g), ",".join(g.output_names), f"fused={fused}",
                        f"precision={precision}",
                        compiler_fingerprint())
        self.symbols, self.py = self._load(cache, key)

    def _load(self, cache: CodeCache, key: str) -> tuple[list[str], ModuleType]:
        """The module for `key`: the cached one if it imports, else generated
        and stored. A cached entry that passes its manifest but does not
        import is removed (that copy only) and regenerated, so it cannot
        poison later runs; a failure of a fresh module is a compiler bug."""
        files = cache.get(key)
        if files is not None:
            try:
                return _import(cache.path(key), key, files)
            except Exception:  # anything a broken module can raise on import
                cache.discard(key)
        files = {"kernels.py": self.module.source,
                 "symbols.json": json.dumps(self.module.symbols)}
        return _import(_store(cache, key, files), key, files)

    @cached_property
    def module(self) -> Module:
        return emit_triton(self.graph, fused=self.fused, precision=self.precision)

    def __call__(self, inputs: Mapping[str, Any], params: Mapping[str, Any], seed: int = 0,
                 dims: Mapping[str, int] | None = None, pool: Pool | None = None
                 ) -> dict[str, Any]:
        """Run on NumPy arrays or torch tensors; outputs come back as torch
        tensors (on the device) if the inputs were tensors, else as arrays."""
        import torch
        env = dict(dims or {})
        for i in self.graph.inputs:
            n = self.graph.nodes[i]
            bind_input(n, _shape_only(inputs[n.attrs["name"]]), env)
        dev = device()
        t_in = {k: _on(v, dev) for k, v in inputs.items()}
        t_par = {k: _on(v, dev) for k, v in params.items()}
        as_torch = any(isinstance(v, torch.Tensor) for v in inputs.values())
        unbound = sorted(set(self.symbols) - set(env))
        if unbound:
            raise DSLError(f"dimension {unbound[0]} is not bound by the inputs; pass --dims "
                           f"{unbound[0]}=N")
        outs = self.py.launch(t_in, t_par, env, seed, pool or Pool(dev))
        return outs if as_torch else {k: v.cpu().numpy() for k, v in outs.items()}


def _import(directory: Path, key: str, files: dict[str, str]) -> tuple[list[str], ModuleType]:
    symbols = json.loads(files["symbols.json"])
    module = load_module(directory / "kernels.py", f"ember_kernels_{key[:20]}")
    if not callable(getattr(module, "launch", None)):
        del sys.modules[module.__name__]
        raise ImportError(f"{directory / 'kernels.py'} defines no launch()")
    return symbols, module


def _store(cache: CodeCache, key: str, files: dict[str, str]) -> Path:
    """Put the entry in the cache; if the cache cannot be written (a file in
    its place, no permission, a full disk), warn once and use a private
    temporary directory instead: an unusable cache never stops a run."""
    try:
        return cache.put(key, files)
    except OSError as e:
        if str(cache.root) not in _WARNED:
            _WARNED.add(str(cache.root))
            print(f"ember: warning: cannot use the kernel cache '{printable(str(cache.root))}' "
                  f"({e.strerror or e}); compiling into a private temporary directory",
                  file=sys.stderr)
    try:
        return CodeCache(_private_root()).put(key, files)
    except OSError as e:
        raise DSLError(f"cannot write the generated kernels to the cache '{cache.root}' or to "
                       f"a temporary directory: {e.strerror or e}") from None


_WARNED: set[str] = set()


@lru_cache(maxsize=1)
def _private_root() -> Path:
    """A cache directory of this process's own, removed when it exits."""
    root = tempfile.mkdtemp(prefix="ember-kernels-")
    atexit.register(shutil.rmtree, root, True)
    return Path(root)


def _on(v: Any, dev: str) -> Any:
    """A contiguous torch tensor on the device, from an array or a tensor. An
    array is copied: a training step stores its update over the state it
    replaces (codegen/foreach.py), and the caller's arrays must not change; a
    torch tensor already on the device is used as it is (donated)."""
    import torch
    # (not np.ascontiguousarray: it turns a 0-d array into a 1-d one)
    t = v if isinstance(v, torch.Tensor) else torch.as_tensor(np.array(v))
    return t.to(dev).contiguous()


def _shape_only(v: Any) -> np.ndarray:
    """A zero-copy NumPy stand-in with v's shape and dtype, for binding dims."""
    import torch
    if not isinstance(v, torch.Tensor):
        return np.asarray(v)
    dtype = torch.empty((), dtype=v.dtype).numpy().dtype
    return np.broadcast_to(np.zeros((), dtype), tuple(v.shape))
