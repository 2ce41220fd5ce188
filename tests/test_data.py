"""Training data: checks with clear messages, conversions, the documented
shuffle order, batching, and the built-in digits split."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ember.ir.dtypes import DType
from ember.ir.graph import TensorType
from ember.ir.loc import DSLError
from ember.runtime import data

MLP = {"x": TensorType(("B", 64), DType.F32), "y": TensorType(("B",), DType.I32)}
LENET = {"x": TensorType(("B", 1, 8, 8), DType.F32), "y": TensorType(("B",), DType.I32)}
SEQ = {"ids": TensorType(("B", "T"), DType.I32), "targets": TensorType(("B", "T"), DType.I32)}


def _mlp_arrays(n: int = 10) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {"x": rng.standard_normal((n, 64)).astype(np.float32),
            "y": rng.integers(0, 10, n).astype(np.int32)}


def test_npz_loads_and_converts_exactly(tmp_path: Path) -> None:
    a = _mlp_arrays()
    f = tmp_path / "d.npz"
    np.savez(f, x=a["x"].astype(np.float64), y=a["y"].astype(np.int64))
    ds = data.load_npz(str(f), MLP)
    assert ds.arrays["x"].dtype == np.float32 and ds.arrays["y"].dtype == np.int32
    np.testing.assert_array_equal(ds.arrays["y"], a["y"])
    assert ds.n == 10 and len(ds.notes) == 2 and "(exact)" in ds.notes[1]


@pytest.mark.parametrize("change, message", [
    (lambda a: {"x": a["x"]}, "no array 'y'"),
    (lambda a: {"x": a["x"], "labels": a["y"]}, "unexpected array 'labels'"),
    (lambda a: {**a, "x": a["x"][:, :32]}, r"f32\[10, 32\], expected f32\[B, 64\]"),
    (lambda a: {**a, "x": a["x"][None]}, "samples along axis 0"),
    (lambda a: {**a, "y": a["y"][:9]}, "different numbers of samples.*'x' 10, 'y' 9"),
    (lambda a: {**a, "y": a["y"].astype(np.float32)}, "expected i32 values"),
    (lambda a: {**a, "y": a["y"].astype(np.int64) + 2**40}, "expected i32 values"),
    (lambda a: {**a, "x": a["x"].astype(np.int32)}, "expected f32 values"),
    (lambda a: {"x": a["x"][:0], "y": a["y"][:0]}, "holds no samples"),
])
def test_bad_arrays_are_refused(change, message: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(DSLError, match=message):
        data.check(change(_mlp_arrays()), MLP, "'d.npz'")


def test_misnamed_array_gets_a_hint() -> None:
    a = _mlp_arrays()
    with pytest.raises(DSLError) as e:
        data.check({"x": a["x"], "yy": a["y"]}, MLP, "'d.npz'")
    assert "'yy' -> 'y'" in e.value.note


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_data_is_located(bad: float) -> None:
    a = _mlp_arrays()
    a["x"][3, 5] = bad
    with pytest.raises(DSLError, match=r"holds (nan|inf) at index \(3, 5\)"):
        data.check(a, MLP, "'d.npz'")


def test_symbolic_dims_bind_across_arrays() -> None:
    ids = np.zeros((4, 6), np.int32)
    assert data.check({"ids": ids, "targets": ids}, SEQ, "s").n == 4
    with pytest.raises(DSLError, match="with T=6"):
        data.check({"ids": ids, "targets": ids[:, :5]}, SEQ, "s")


def test_labels_out_of_range_are_located() -> None:
    ds = data.check(_mlp_arrays(), MLP, "'d.npz'")
    data.check_labels(ds, ["y"], 10)
    ds.arrays["y"][7] = 10
    with pytest.raises(DSLError, match=r"is 10 at index \(7,\).*\[0, 10\)"):
        data.check_labels(ds, ["y"], 10)


def test_unreadable_and_missing_files(tmp_path: Path) -> None:
    with pytest.raises(DSLError, match="does not exist"):
        data.load_npz(str(tmp_path / "none.npz"), MLP)
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(DSLError, match="cannot read data file"):
        data.load_npz(str(tmp_path / "junk.npz"), MLP)
    np.save(tmp_path / "one.npy", np.zeros(3))
    with pytest.raises(DSLError, match="single array"):
        data.load_npz(str(tmp_path / "one.npy"), MLP)


def test_order_is_pcg64_from_seed_and_epoch() -> None:
    """The documented order, fixed: a change here breaks every resumed run."""
    want = np.random.Generator(np.random.PCG64(np.random.SeedSequence([3, 1]))).permutation(10)
    np.testing.assert_array_equal(data.order(10, 3, 1), want)
    assert not np.array_equal(data.order(10, 3, 1), data.order(10, 3, 2))


@pytest.mark.parametrize("drop_last, sizes", [(False, [4, 4, 2]), (True, [4, 4])])
def test_batches_cover_the_order(drop_last: bool, sizes: list[int]) -> None:
    ds = data.check(_mlp_arrays(), MLP, "d")
    idx = data.order(10, 0, 0)
    got = list(data.batches(ds, 4, idx, drop_last))
    assert [len(b["y"]) for b in got] == sizes
    assert data.steps_per_epoch(10, 4, drop_last) == len(sizes)
    np.testing.assert_array_equal(np.concatenate([b["y"] for b in got]),
                                  ds.arrays["y"][idx[:sum(sizes)]])
    resumed = list(data.batches(ds, 4, idx, drop_last, start=1))
    np.testing.assert_array_equal(resumed[0]["x"], got[1]["x"])


def test_digits_split_is_stratified_80_20_and_fixed() -> None:
    train, test = data.digits(LENET)
    assert (train.n, test.n) == (1438, 359)
    assert train.arrays["x"].shape == (1438, 1, 8, 8) and train.arrays["x"].max() == 1.0
    counts = np.bincount(test.arrays["y"]) / np.bincount(train.arrays["y"])
    assert np.allclose(counts, 0.25, atol=0.02)
    again, _ = data.digits(MLP)
    np.testing.assert_array_equal(again.arrays["x"].reshape(-1, 1, 8, 8), train.arrays["x"])


def test_digits_needs_an_image_and_a_label_input() -> None:
    with pytest.raises(DSLError, match="this one takes ids: i32"):
        data.digits(SEQ)
