"""Model inputs from files, and random inputs for the ones not given.

Missing inputs are drawn from their declared types: floats ~ N(0, 1); integer
inputs uniformly from [0, n), where n is read off how the graph uses them (the
rows of the table they index, or the class count they are compared with).
"""

from __future__ import annotations

import difflib
import math
import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from ember.ir import dims
from ember.ir.dtypes import round_to
from ember.ir.graph import Graph, Node, TensorType, walk_nodes
from ember.ir.loc import UNKNOWN, DSLError, Loc
from ember.ir.ops import Op

from .files import printable
from .oracle import bind_input
from .params_io import READ_ERRORS, array_type, conversion_note, convert, read_npz

NpzFile = np.lib.npyio.NpzFile

PASS_THROUGH = frozenset({Op.RESHAPE, Op.EXPAND, Op.PERMUTE, Op.SLICE, Op.INDEX})


def load_inputs(g: Graph, pairs: list[str], npz: str | None
                ) -> tuple[dict[str, np.ndarray], list[str]]:
    """Inputs from `NAME=FILE.npy` pairs and an optional .npz, checked by name and
    converted to the declared dtypes where params_io.convert allows; with a line
    saying so for each conversion."""
    found: dict[str, tuple[np.ndarray, str]] = {}
    if npz:
        found.update({k: (v, npz) for k, v in _load_npz(npz).items()})
    for pair in pairs:
        name, sep, file = pair.partition("=")
        if not sep or not name:
            raise DSLError(f"--input expects NAME=FILE.npy, found '{printable(pair)}'")
        if name in found:  # given twice: which one was meant is a guess
            raise DSLError(f"input '{printable(name)}' is given twice, by "
                           f"'{printable(found[name][1])}' and by '{printable(file)}'")
        data = _load(file)
        if isinstance(data, NpzFile):
            data.close()
            raise DSLError(f"--input {printable(name)}=... expects a .npy file, but "
                           f"'{printable(file)}' is a .npz archive",
                           note=f"use --inputs {printable(file)} to read inputs by name")
        found[name] = (data, file)
    by_name = {g.nodes[i].attrs["name"]: g.nodes[i] for i in g.inputs}
    for name, (_, file) in found.items():
        if name not in by_name:
            close = difflib.get_close_matches(name, list(by_name), n=1)
            raise DSLError(f"'{printable(file)}' provides input '{printable(name)}', but "
                           f"{g.name} takes {_names(list(by_name))}",
                           note=f"did you mean '{close[0]}'?" if close else "")
    return _convert_all(by_name, found)


def _convert_all(by_name: dict[str, Node], found: dict[str, tuple[np.ndarray, str]]
                 ) -> tuple[dict[str, np.ndarray], list[str]]:
    out, notes = {}, []
    for name, (value, file) in found.items():
        out[name] = _check_file_input(by_name[name], value, file)
        if out[name] is not value:
            notes.append(conversion_note(f"input {name} from '{printable(file)}'", value,
                                         out[name]))
    return out, notes


def _names(names: list[str]) -> str:
    if not names:
        return "no inputs"
    return ("input " if len(names) == 1 else "inputs ") + ", ".join(f"'{n}'" for n in names)


def _load_npz(path: str) -> dict[str, np.ndarray]:
    data = _load(path)
    if not isinstance(data, NpzFile):
        raise DSLError(f"--inputs expects a .npz archive of named arrays, but "
                       f"'{printable(path)}' holds a single array",
                       note="use --input NAME=FILE.npy for one input")
    try:
        with data as f:
            return read_npz(path, f)
    except READ_ERRORS as e:
        raise DSLError(f"cannot read input file '{printable(path)}': {printable(str(e))}") \
            from None


def _load(path: str) -> np.ndarray | NpzFile:
    if not Path(path).is_file():
        raise DSLError(f"input file '{printable(path)}' does not exist")
    try:
        return np.load(path, allow_pickle=False)
    except READ_ERRORS as e:
        # np.load tries unpickling a file it does not recognise as .npy or .npz
        reason = "not a NumPy .npy or .npz file" if "pickled" in str(e) else printable(str(e))
        raise DSLError(f"cannot read input file '{printable(path)}': {reason}") from None


def _check_file_input(n: Node, value: np.ndarray, file: str) -> np.ndarray:
    """The array as the input's dtype, or a located error if it cannot be."""
    t = n.tensor
    bad_dim = any(isinstance(d, int) and d != a for d, a in zip(t.shape, value.shape))
    converted = convert(value, t.dtype.np)
    if converted is None or value.ndim != t.rank or bad_dim:
        raise DSLError(f"input '{n.attrs['name']}' from '{printable(file)}' is "
                       f"{array_type(value)}, expected {t}", n.loc)
    return converted


def check_dim_names(g: Graph, env: Mapping[str, int]) -> None:
    """A --dims name the graph does not have is a typo, not something to ignore."""
    known = graph_dims(g)
    for name in env:
        if name not in known:
            close = difflib.get_close_matches(name, sorted(known), n=1)
            have = ", ".join(sorted(known)) or "none"
            raise DSLError(f"--dims {name}: {g.name} has no dimension {name} (its dimensions: "
                           f"{have})", note=f"did you mean {close[0]}?" if close else "")


def graph_dims(g: Graph) -> set[str]:
    """The symbolic dims left in a graph (after bind_dims: the unbound ones)."""
    return set().union(*(_symbols(n) for n in walk_nodes(g)))


def require_dims(g: Graph, what: str) -> None:
    """Say which dims need values, in the words of --dims, when some have none."""
    missing = sorted(graph_dims(g))
    if missing:
        raise DSLError(f"{what} needs a value for every dimension; unbound: "
                       f"{', '.join(missing)}", note="pass --dims " +
                       ",".join(f"{d}=N" for d in missing))


def _symbols(n: Node) -> set[str]:
    types = n.type if isinstance(n.type, tuple) else (n.type,) if n.type else ()
    found = set().union(*(dims.symbols(t.shape) for t in types))
    return found | (dims.symbols((n.attrs["length"],)) if "length" in n.attrs else set())


def ensure_fits(what: str, types: list[tuple[str, TensorType]], env: Mapping[str, int],
                loc: Loc = UNKNOWN) -> None:
    """Refuse, before allocating, tensors that together exceed this machine's
    memory, saying how many bytes they would need (unbound shapes count 0)."""
    sizes = [(name, t, _nbytes(t, env)) for name, t in types]
    total = sum(b for _, _, b in sizes)
    memory = _memory()
    if memory and total > memory:
        name, t, most = max(sizes, key=lambda s: s[2])
        shape = dims.fmt(dims.bind_shape(t.shape, env))
        raise DSLError(f"{what} would need {_bytes(total)} ({name}: {t.dtype}{shape} alone is "
                       f"{_bytes(most)}), more than this machine's {_bytes(memory)} of memory",
                       loc)


def _nbytes(t: TensorType, env: Mapping[str, int]) -> int:
    if dims.symbols(t.shape) - set(env):
        return 0
    return math.prod(dims.bind_shape(t.shape, env)) * t.dtype.itemsize


def _memory() -> int:
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):  # not on this platform: no check
        return 0


def _bytes(n: int) -> str:
    for unit, size in (("EiB", 2**60), ("PiB", 2**50), ("TiB", 2**40), ("GiB", 2**30),
                       ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{n / size:.3g} {unit}" if n < 2**70 else f"about 10**{len(str(n)) - 1} bytes"
    return f"{n} bytes"


def _check_memory(g: Graph, env: Mapping[str, int]) -> None:
    """The inputs together, then each value the run computes on its own."""
    ensure_fits("the inputs", [(f"input '{g.nodes[i].attrs['name']}'", g.nodes[i].tensor)
                               for i in g.inputs], env)
    for n in g.nodes:
        if n.type is not None and not isinstance(n.type, tuple):
            ensure_fits("this value", [(n.op.value, n.tensor)], env, n.loc)


def draw_inputs(g: Graph, given: Mapping[str, np.ndarray], env: Mapping[str, int],
                seed: int) -> tuple[dict[str, np.ndarray], dict[str, int], list[str]]:
    """All inputs (given ones plus random ones), the bound dims, and notes to print."""
    bound = dict(env)
    for i in g.inputs:
        n = g.nodes[i]
        if n.attrs["name"] in given:
            bind_input(n, given[n.attrs["name"]], bound)
    _check_memory(g, bound)
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
        return round_to(rng.standard_normal(shape), t.dtype), f"{label} ~ N(0, 1)"
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
