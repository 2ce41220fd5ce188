"""Training data: `.npz` files and the built-in digits, checked and batched.

A dataset is one array per input of the loss entry, named after it, with the
samples along axis 0. Everything is checked before training starts (names,
dtypes, shapes, equal sample counts, finite values, label ranges), so a bad
file is one located message, never a failure at step 500.

Order: epoch e visits the samples in `np.random.default_rng([seed, e])
.permutation(n)` order (PCG64 seeded by SeedSequence([seed, e])), cut into
consecutive batches; the last partial batch is kept unless drop_last. The
order depends on (seed, epoch) only, so a resumed run replays it exactly.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ember.ir.graph import TensorType
from ember.ir.loc import DSLError

from .files import printable
from .params_io import READ_ERRORS, array_type, conversion_note, convert, read_npz

NpzFile = np.lib.npyio.NpzFile
DIGITS_TEST_FRACTION, DIGITS_SPLIT_SEED = 0.2, 0


@dataclass(frozen=True)
class Dataset:
    """Arrays by input name (samples along axis 0), where they came from, and
    notes on conversions made while loading (printed once)."""

    arrays: dict[str, np.ndarray]
    source: str
    notes: tuple[str, ...] = ()

    @property
    def n(self) -> int:
        return len(next(iter(self.arrays.values())))


def load_npz(path: str, inputs: Mapping[str, TensorType]) -> Dataset:
    """A dataset from an `.npz` file whose arrays are named after `inputs`."""
    if not Path(path).is_file():
        raise DSLError(f"data file '{printable(path)}' does not exist")
    try:
        data = np.load(path, allow_pickle=False)
        if not isinstance(data, NpzFile):
            raise DSLError(f"data file '{printable(path)}' holds a single array; expected an "
                           f".npz archive with arrays named {_names(inputs)}")
        with data as f:
            arrays = read_npz(path, f)
    except READ_ERRORS as e:
        reason = "not an .npz file" if "pickled" in str(e) else printable(str(e))
        raise DSLError(f"cannot read data file '{printable(path)}': {reason}") from None
    return check(arrays, inputs, f"'{printable(path)}'")


def check(arrays: Mapping[str, np.ndarray], inputs: Mapping[str, TensorType],
          source: str) -> Dataset:
    """The arrays converted to the inputs' dtypes, or a DSLError saying what is wrong."""
    _check_names(arrays, inputs, source)
    out, notes = {}, []
    for name, t in inputs.items():
        out[name], note = _convert(name, arrays[name], t, source)
        notes += [note] if note else []
    _check_shapes(out, inputs, source)
    for name, a in out.items():
        _check_finite(name, a, source)
    return Dataset(out, source, tuple(notes))


def _names(inputs: Mapping[str, object]) -> str:
    return ", ".join(f"'{n}'" for n in inputs)


def _check_names(arrays: Mapping[str, np.ndarray], inputs: Mapping[str, TensorType],
                 source: str) -> None:
    missing = [n for n in inputs if n not in arrays]
    extra = [n for n in arrays if n not in inputs]
    if not missing and not extra:
        return
    what = [f"no array '{n}'" for n in missing] + [f"an unexpected array '{printable(n)}'"
                                                   for n in extra]
    hints = [f"'{printable(e)}' -> '{m[0]}'" for e in extra
             for m in [difflib.get_close_matches(e, missing, n=1)] if m]
    raise DSLError(f"data {source} has {', '.join(what)}; the arrays must be named after the "
                   f"entry's inputs: {_names(inputs)}",
                   note=f"rename {', '.join(hints)}" if hints else "")


def _convert(name: str, a: np.ndarray, t: TensorType, source: str
             ) -> tuple[np.ndarray, str | None]:
    """`a` as t's dtype when that is a conversion a user means (params_io.convert)."""
    converted = convert(a, t.dtype.np)
    if converted is None:
        raise DSLError(f"data '{name}' in {source} is {array_type(a)}, expected {t.dtype} "
                       f"values for the input {t}")
    return converted, None if converted is a else conversion_note(f"data '{name}'", a, converted)


def _check_shapes(arrays: Mapping[str, np.ndarray], inputs: Mapping[str, TensorType],
                  source: str) -> None:
    """Axis 0 is the samples (a symbolic batch dim); the other axes match the
    type, a symbolic one taking the same value in every array."""
    bound: dict[str, int] = {}
    for name, t in inputs.items():
        a = arrays[name]
        if isinstance(t.shape[0] if t.shape else 0, int):
            raise DSLError(f"input '{name}' is {t}: ember train batches along axis 0, so its "
                           f"first dimension must be symbolic (such as B)")
        ok = a.ndim == len(t.shape) and all(
            bound.setdefault(d, n) == n if isinstance(d, str) else d == n
            for d, n in zip(t.shape[1:], a.shape[1:]))
        if not ok:
            raise DSLError(f"data '{name}' in {source} is {array_type(a)}, expected {t} "
                           f"(samples along axis 0){_binding(bound)}")
    counts = {name: len(a) for name, a in arrays.items()}
    if len(set(counts.values())) > 1:
        listed = ", ".join(f"'{k}' {v}" for k, v in counts.items())
        raise DSLError(f"the arrays in {source} have different numbers of samples (axis 0): "
                       f"{listed}")
    if not any(counts.values()):
        raise DSLError(f"data {source} holds no samples")


def _binding(bound: Mapping[str, int]) -> str:
    return f" with {', '.join(f'{k}={v}' for k, v in bound.items())}" if bound else ""


def _check_finite(name: str, a: np.ndarray, source: str) -> None:
    if a.dtype.kind != "f" or np.isfinite(a).all():
        return
    at = tuple(int(i) for i in np.argwhere(~np.isfinite(a))[0])
    raise DSLError(f"data '{name}' in {source} holds {a[at]} at index {at}; training data "
                   f"must be finite")


def check_labels(ds: Dataset, labels: Sequence[str], classes: int) -> None:
    """Class ids must lie in [0, classes): the forward entry's last output dim."""
    for name in labels:
        a = ds.arrays[name]
        bad = np.argwhere((a < 0) | (a >= classes))
        if len(bad):
            at = tuple(int(i) for i in bad[0])
            raise DSLError(f"label '{name}' in {ds.source} is {a[at]} at index {at}; labels "
                           f"must be class ids in [0, {classes}) (the last dimension of the "
                           f"forward entry's output)")


def steps_per_epoch(n: int, batch_size: int, drop_last: bool) -> int:
    return n // batch_size if drop_last else -(-n // batch_size)


def order(n: int, seed: int, epoch: int) -> np.ndarray:
    """The sample order of `epoch` (see the module docstring)."""
    return np.random.default_rng([seed, epoch]).permutation(n)


def batches(ds: Dataset, batch_size: int, idx: np.ndarray, drop_last: bool = False,
            start: int = 0) -> Iterator[dict[str, np.ndarray]]:
    """Consecutive batches of the samples `idx`, from batch number `start` on."""
    for b in range(start, steps_per_epoch(len(idx), batch_size, drop_last)):
        take = idx[b * batch_size:(b + 1) * batch_size]
        yield {name: a[take] for name, a in ds.arrays.items()}


def digits(inputs: Mapping[str, TensorType]) -> tuple[Dataset, Dataset]:
    """scikit-learn's 1797 8x8 digits (bundled, offline), pixels / 16, shaped
    for the entry's image input, split into (train, test) by `digits_split`."""
    image, label = _digits_inputs(inputs)
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise DSLError("--data digits needs scikit-learn: pip install 'ember[train]'") from None
    raw = load_digits()
    x = (raw.data / 16.0).reshape(len(raw.data), *inputs[image].shape[1:])
    y = raw.target.astype(np.int32)
    train, test = digits_split(y)
    arrays = {image: x.astype(inputs[image].dtype.np), label: y}
    return (check({k: v[train] for k, v in arrays.items()}, inputs, "digits (train split)"),
            check({k: v[test] for k, v in arrays.items()}, inputs, "digits (test split)"))


def _digits_inputs(inputs: Mapping[str, TensorType]) -> tuple[str, str]:
    """(image input, label input): one float input of 64 values per sample
    (any static shape) and one integer input of one class id per sample."""
    floats = [k for k, t in inputs.items() if t.dtype.is_float]
    ints = [k for k, t in inputs.items() if t.dtype.is_int]
    shape = inputs[floats[0]].shape[1:] if len(floats) == 1 else ()
    size = np.prod(shape) if all(isinstance(d, int) for d in shape) else 0
    if len(inputs) != 2 or len(ints) != 1 or size != 64 or len(inputs[ints[0]].shape) != 1:
        given = ", ".join(f"{k}: {t}" for k, t in inputs.items())
        raise DSLError(f"--data digits needs an entry taking 8x8 images (one float input of "
                       f"64 values per sample) and class ids (an i32[B] input); this one takes "
                       f"{given}")
    return floats[0], ints[0]


def digits_split(y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The fixed stratified 80/20 split: per class (in order 0..9) one
    generator, default_rng(0), permutes the class's sample indices and the
    first round(20%) go to the test split; both splits keep the file order."""
    rng = np.random.default_rng(DIGITS_SPLIT_SEED)
    test = []
    for c in np.unique(y):
        members = rng.permutation(np.flatnonzero(y == c))
        test.append(members[:round(DIGITS_TEST_FRACTION * len(members))])
    is_test = np.zeros(len(y), bool)
    is_test[np.concatenate(test)] = True
    return np.flatnonzero(~is_test), np.flatnonzero(is_test)
