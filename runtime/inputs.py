"""Model inputs from files, and random inputs for the ones not given.

Missing inputs are drawn from their declared types: floats ~ N(0, 1); integer
inputs uniformly from [0, n), where n is read off how the graph uses them (the
rows of the table they index, or the class count they are compared with).
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from ember.ir import dims
from ember.ir.graph import Graph, Node
from ember.ir.loc import DSLError
from ember.ir.ops import Op

from .oracle import bind_input
from .params_io import array_type

NpzFile = np.lib.npyio.NpzFile

PASS_THROUGH = frozenset({Op.RESHAPE, Op.EXPAND, Op.PERMUTE, Op.SLICE, Op.INDEX})


def load_inputs(g: Graph, pairs: list[str], npz: str | None) -> dict[str, np.ndarray]:
    """Inputs from `NAME=FILE.npy` pairs and an optional .npz, checked by name."""
    found: dict[str, tuple[np.ndarray, str]] = {}
    if npz:
        data = _load(npz)
        if not isinstance(data, NpzFile):
            raise DSLError(f"--inputs expects a .npz archive of named arrays, but '{npz}' "
                           f"holds a single array", note="use --input NAME=FILE.npy for one input")
        with data as f:
            found.update({k: (f[k], npz) for k in f.files})
    for pair in pairs:
        name, sep, file = pair.partition("=")
        if not sep or not name:
            raise DSLError(f"--input expects NAME=FILE.npy, found '{pair}'")
        data = _load(file)
        if isinstance(data, NpzFile):
            data.close()
            raise DSLError(f"--input {name}=... expects a .npy file, but '{file}' is a .npz "
                           f"archive", note=f"use --inputs {file} to read inputs by name")
        found[name] = (data, file)
    by_name = {g.nodes[i].attrs["name"]: g.nodes[i] for i in g.inputs}
    for name, (value, file) in found.items():
        if name not in by_name:
            close = difflib.get_close_matches(name, list(by_name), n=1)
            raise DSLError(f"'{file}' provides input '{name}', but {g.name} takes "
                           f"{_names(list(by_name))}",
                           note=f"did you mean '{close[0]}'?" if close else "")
        _check_file_input(by_name[name], value, file)
    return {k: v for k, (v, _) in found.items()}


def _names(names: list[str]) -> str:
    if not names:
        return "no inputs"
    return ("input " if len(names) == 1 else "inputs ") + ", ".join(f"'{n}'" for n in names)


def _load(path: str) -> np.ndarray | NpzFile:
    if not Path(path).is_file():
        raise DSLError(f"input file '{path}' does not exist")
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as e:
        # np.load tries unpickling a file it does not recognise as .npy or .npz
        reason = "not a NumPy .npy or .npz file" if "pickled" in str(e) else str(e)
        raise DSLError(f"cannot read input file '{path}': {reason}") from None


def _check_file_input(n: Node, value: np.ndarray, file: str) -> None:
    t = n.tensor
    bad_dim = any(isinstance(d, int) and d != a for d, a in zip(t.shape, value.shape))
    if value.dtype != t.dtype.np or value.ndim != t.rank or bad_dim:
        raise DSLError(f"input '{n.attrs['name']}' from '{file}' is {array_type(value)}, "
                       f"expected {t}", n.loc)


def draw_inputs(g: Graph, given: Mapping[str, np.ndarray], env: Mapping[str, int],
                seed: int) -> tuple[dict[str, np.ndarray], dict[str, int], list[str]]:
    """All inputs (given ones plus random ones), the bound dims, and notes to print."""
    bound = dict(env)
    for i in g.inputs:
        n = g.nodes[i]
        if n.attrs["name"] in given:
            bind_input(n, given[n.attrs["name"]], bound)
    rng = np.random.default_rng(seed + 1)  # not the parameters' stream
    inputs, notes = dict(given), []
    for i in g.inputs:
        n = g.nodes[i]
        if n.attrs["name"] not in inputs:
            inputs[n.attrs["name"]], how = _draw(g, i, bound, rng)
            notes.append(f"input {n.attrs['name']}: random {how} (seed {seed})")
    return inputs, bound, notes


def _draw(g: Graph, i: int, env: dict[str, int], rng: np.random.Generator
          ) -> tuple[np.ndarray, str]:
    n = g.nodes[i]
    t = n.tensor
    unbound = sorted(dims.symbols(t.shape) - set(env))
    if unbound:
        raise DSLError(f"dimension {unbound[0]} of input '{n.attrs['name']}' is not bound; pass "
                       f"--dims {unbound[0]}=N or give the input", n.loc)
    shape = dims.bind_shape(t.shape, env)
    label = f"{t.dtype}[{', '.join(map(str, shape))}]"
    if t.dtype.is_float:
        return rng.standard_normal(shape).astype(t.dtype.np), f"{label} ~ N(0, 1)"
    if t.dtype.is_int:
        hi = int_bound(g, i) or 2
        return rng.integers(0, hi, shape).astype(t.dtype.np), f"{label} ~ U{{0..{hi - 1}}}"
    return rng.random(shape) < 0.5, f"{label} ~ Bernoulli(0.5)"


def int_bound(g: Graph, i: int) -> int | None:
    """The exclusive upper bound an integer input must respect, if the graph says."""
    users = g.users()
    for u in users[i]:
        n = g.nodes[u]
        if n.op is Op.GATHER and n.srcs[1] == i:
            return _static(g.nodes[n.srcs[0]].tensor.shape[0])
        if n.op is Op.EQ:
            other = g.nodes[n.srcs[0] if n.srcs[1] == i else n.srcs[1]]
            if other.op is Op.IOTA:
                return _static(other.tensor.shape[other.attrs["axis"]])
        if n.op in PASS_THROUGH and n.srcs[0] == i:
            found = int_bound(g, u)
            if found:
                return found
    return None


def _static(d: dims.Dim) -> int | None:
    return d if isinstance(d, int) else None
