"""What the command line accepts from a user: dims to bind before compiling for
a GPU, and input and parameter arrays converted when the conversion is exact
or plainly meant (f64 -> f32 inputs, int64 ids in range -> i32, f32
parameters under --precision f64), said in one line; anything that would lose
meaning is still rejected with a message naming the array."""

from __future__ import annotations

from pathlib import Path

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
