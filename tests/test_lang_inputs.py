"""What the command line accepts from a user: dims to bind before compiling for
a GPU, and input and parameter arrays converted when the conversion is exact
or plainly meant (f64 -> f32 inputs, int64 ids in range -> i32, f32
parameters under --precision f64), said in one line; anything that would lose
meaning is still rejected with a message naming the array."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ember import cli

MODEL = """model M {
  param w: f32[4, 3] = glorot_uniform
  def forward(x: f32[B, 4], y: i32[B]) -> (loss: f32[], logits: f32[B, 3]) {
    let logits = x @ w
    return cross_entropy(logits, y), logits
  }
}
"""


@pytest.fixture()
def model(tmp_path: Path) -> Path:
    path = tmp_path / "m.ember"
    path.write_text(MODEL)
    return path


def test_sm90_without_dims_lists_them(model: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["compile", str(model), "--target", "sm_90"]) == 1
    err = capsys.readouterr().err
    assert "compiling for sm_90 needs a value for every dimension; unbound: B" in err
    assert "pass --dims B=N" in err and "not defined" not in err


def _run(model: Path, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    code = cli.main(["run", str(model), "--dims", "B=3", *args])
    out = capsys.readouterr()
    return code, out.out + out.err


def _npz(tmp_path: Path, **arrays: np.ndarray) -> str:
    path = tmp_path / "in.npz"
    np.savez(path, **arrays)
    return str(path)


X = np.random.default_rng(0).standard_normal((3, 4))


def test_float64_and_int64_inputs_are_converted(model: Path, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    wide = _npz(tmp_path, x=X, y=np.array([0, 2, 1], np.int64))
    code, out = _run(model, capsys, "--inputs", wide, "-o", str(tmp_path / "a.npz"))
    assert code == 0
    assert f"input x from '{wide}': float64 converted to float32\n" in out
    assert f"input y from '{wide}': int64 converted to int32 (exact)" in out
    narrow = _npz(tmp_path, x=X.astype(np.float32), y=np.array([0, 2, 1], np.int32))
    code, out = _run(model, capsys, "--inputs", narrow, "-o", str(tmp_path / "b.npz"))
    assert code == 0 and "converted" not in out
    with np.load(tmp_path / "a.npz") as a, np.load(tmp_path / "b.npz") as b:
        assert all(np.array_equal(a[k], b[k]) for k in ("loss", "logits"))


@pytest.mark.parametrize("y, found", [
    (np.array([0, 2, 2**31], np.int64), "i64[3]"),       # out of range for i32
    (np.array([0.0, 2.0, 1.5]), "f64[3]"),                # fractional
    (np.array([0.0, 2.0, 1.0], np.float32), "f32[3]"),    # floats are not ids
])
def test_conversions_that_lose_meaning_are_refused(model: Path, tmp_path: Path, y: np.ndarray,
                                                   found: str,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    code, out = _run(model, capsys, "--inputs", _npz(tmp_path, x=X, y=y))
    assert code == 1 and "input 'y' from" in out and f"is {found}, expected i32[3]" in out
    assert "m.ember:3:29" in out


def test_float32_params_under_precision_f64(model: Path, tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "p.npz"
    np.savez(path, w=np.arange(12, dtype=np.float32).reshape(4, 3) / 7)
    code, out = _run(model, capsys, "--params", str(path), "--precision", "f64")
    assert code == 0
    assert f"1 parameters from '{path}': float32 converted to float64 (exact)" in out
    code, out = _run(model, capsys, "--params", str(path))
    assert code == 0 and "converted" not in out
    np.savez(path, w=np.zeros((4, 3), np.int64))
    code, out = _run(model, capsys, "--params", str(path))
    assert code == 1 and "w: expected f32[4, 3], found i64[4, 3]" in out
