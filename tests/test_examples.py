"""The dataset scripts in examples/: the command line writes deterministic
train/val files that `ember train` accepts for their model, and the labels
are the task's, checked here from the raw symbols, not from the script's code."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from util import MODELS, ROOT

from ember import api
from ember.runtime import data

EXAMPLES = ROOT / "examples"
sys.path.insert(0, str(EXAMPLES))

import sort_digits  # noqa: E402
import temporal_order  # noqa: E402

MODEL = {"temporal_order": "lstm", "sort_digits": "transformer"}


def write(script: str, out: Path, n: int, seed: int) -> dict[str, dict[str, np.ndarray]]:
    """Run the script's command line; {"train": arrays, "val": arrays}."""
    subprocess.run([sys.executable, str(EXAMPLES / f"{script}.py"), "--out", str(out),
                    "--n", str(n), "--seed", str(seed)], check=True, capture_output=True)
    return {split: dict(np.load(out / f"{split}.npz")) for split in ("train", "val")}


@pytest.mark.parametrize("script", MODEL)
def test_files_fit_the_model_and_are_deterministic(script: str, tmp_path: Path) -> None:
    files = write(script, tmp_path / "a", 12, 5)
    g = api.compile_file(MODELS / f"{MODEL[script]}.ember", "loss")
    inputs = {g.nodes[i].attrs["name"]: g.nodes[i].tensor for i in g.inputs}
    train = data.load_npz(str(tmp_path / "a" / "train.npz"), inputs)
    val = data.load_npz(str(tmp_path / "a" / "val.npz"), inputs)
    assert (train.n, val.n, train.notes) == (12, 3, ())  # no conversion needed
    (loss,) = api.run(g, {k: a[:2] for k, a in train.arrays.items()},
                      api.init_params(g, seed=0)).values()
    assert np.isfinite(loss) and loss > 0
    again, other = write(script, tmp_path / "b", 12, 5), write(script, tmp_path / "c", 12, 6)
    for split in files:
        for name, a in files[split].items():
            assert np.array_equal(a, again[split][name]), (split, name)
            assert not np.array_equal(a, other[split][name]), (split, name)


def test_temporal_order_labels() -> None:
    ds = temporal_order.make(500, np.random.default_rng(0))
    x, y = ds["x"], ds["y"]
    assert np.all(x.sum(-1) == 1)  # one-hot
    symbols = np.array(list(temporal_order.SYMBOLS))[x.argmax(-1)]
    assert np.all(symbols[:, 0] == "B") and np.all(symbols[:, -1] == "E")
    for row, label in zip(symbols, y):
        relevant = [s for s in row if s in "XY"]
        assert set(row[1:-1]) <= set("abcdXY") and len(relevant) == 2
        assert label == {"XX": 0, "XY": 1, "YX": 2, "YY": 3}["".join(relevant)]
    assert np.all(np.bincount(y, minlength=4) > 80)  # every class, roughly balanced


def test_sort_digits_targets() -> None:
    ds = sort_digits.make(200, np.random.default_rng(0))
    ids, targets = ds["ids"], ds["targets"]
    k = sort_digits.DIGITS
    assert ids.shape == targets.shape == (200, 2 * k) and ids.max() < 64
    assert np.all(ids[:, k] == sort_digits.SEP) and np.all(targets[:, :k] == sort_digits.FILL)
    for row, want in zip(ids, targets):
        assert list(want[k:]) == sorted(row[:k])
    # teacher forcing: from the separator on, each input is the previous target
    assert np.array_equal(ids[:, k + 1:], targets[:, k:-1])
