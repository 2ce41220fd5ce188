"""Training checkpoints and the parameters a training run starts from.

A checkpoint is the training state as a PyTorch-style state dict in one
safetensors (or .npz) file: the model's parameters and buffers by dotted
name, the optimizer state as `optim.<param>.<slot>` (torch's slot names:
`exp_avg`, `exp_avg_sq`, `momentum_buffer`) and the step counter
`optim.step` (int64, 0-d). It is written atomically (runtime/files.py), so an
interrupted save leaves the previous checkpoint whole.

Resuming is strict: every name, shape and dtype must match the state the
command builds (same model, optimizer and --freeze). Starting from `--params`
is strict about the model's names and shapes but ignores optimizer entries
(`optim.*`) and PyTorch batch norm's `num_batches_tracked`, which Ember does
not keep.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Mapping, Sequence

import numpy as np

from ember.ir.dtypes import dtype_from_np
from ember.ir.graph import TensorType
from ember.ir.loc import DSLError

from .files import printable
from .params_io import check_params, load_params, save_params

STEP = "optim.step"
IGNORED_SUFFIXES = (".num_batches_tracked",)  # PyTorch BatchNorm's counter


def save(path: str, state: Mapping[str, np.ndarray]) -> None:
    """Write the whole training state (`state` holds optim.step)."""
    save_params(path, dict(state))


def types_of(state: Mapping[str, np.ndarray]) -> dict[str, TensorType]:
    """The state's names with their types, as a checkpoint must hold them."""
    out = {}
    for name, a in state.items():
        dt = dtype_from_np(a.dtype)
        assert dt is not None, f"state entry {name} has dtype {a.dtype}"
        out[name] = TensorType(tuple(a.shape), dt)
    return out


def load_resume(path: str, expected: Mapping[str, TensorType]) -> dict[str, np.ndarray]:
    """A checkpoint to continue from, checked name by name against `expected`."""
    state = load_params(path)
    check_params(state, dict(expected), path)
    if int(state[STEP]) < 0:
        raise DSLError(f"checkpoint '{printable(path)}' has a negative step counter "
                       f"{int(state[STEP])}")
    return state


def load_init(path: str, model: Mapping[str, TensorType]) -> tuple[dict[str, np.ndarray],
                                                                    list[str]]:
    """Parameters to start from (an Ember checkpoint or a PyTorch state dict),
    and the names ignored. f32 values widen to f64 for an f64 model (exact)."""
    loaded = load_params(path)
    ignored = sorted(k for k in loaded if k not in model and _ignorable(k))
    params = {k: _widen(v, model[k]) if k in model else v
              for k, v in loaded.items() if k not in ignored}
    check_params(params, dict(model), path)
    return params, ignored


def _ignorable(name: str) -> bool:
    return name.startswith("optim.") or name.endswith(IGNORED_SUFFIXES)


def _widen(a: np.ndarray, t: TensorType) -> np.ndarray:
    if a.dtype == np.float32 and t.dtype.np == np.float64:
        return a.astype(np.float64)
    return a


def matching(globs: Sequence[str], names: Iterable[str], flag: str) -> list[str]:
    """The names (in order) that some glob matches (fnmatch, case-sensitive);
    a glob matching nothing is an error, as it is almost always a typo."""
    names = list(names)
    for glob in globs:
        if not any(fnmatch.fnmatchcase(n, glob) for n in names):
            raise DSLError(f"{flag} '{printable(glob)}' matches no name in the model's state "
                           f"dict; its names: {', '.join(names)}")
    return [n for n in names if any(fnmatch.fnmatchcase(n, g) for g in globs)]


def split_globs(text: str) -> list[str]:
    """'stem*,block1.*' -> ['stem*', 'block1.*']."""
    return [g.strip() for g in text.split(",") if g.strip()]
