"""The fuzz campaign's failures (docs/fuzzing.md), each now a located error or
a correct run through the CLI, never a traceback or a hang."""

from __future__ import annotations

import subprocess
import sys

import pytest
from util import ROOT

CASES = {
    "huge layer array": ("""\
layer Block(d: int) {
  def forward(x: f32[d]) -> f32[d] { return x }
}
model M {
  layer blocks: Block(4)[100000000]
  def forward(x: f32[4]) -> f32[4] { return x }
}
""", ["compile"], "at most 10000 layers"),
    "float split axis": ("""\
model M {
  def forward(x: f32[4]) {
    let a, b = split(x, 2, axis=-0.5)
    return a
  }
}
""", ["compile"], "axis must be an int"),
    "huge dimension": ("""\
model M {
  def forward(x: f32[40000000000000000000000000000000]) {
    let a, b = split(x, 2)
    return a
  }
}
""", ["compile"], "a dimension must be between 0 and"),
    "concat of one symbolic tensor": ("""\
model M {
  def forward(x: f32[B, 4]) { return concat(x) }
}
""", ["run", "--dims", "B=3", "--backend", "triton", "--check"], None),
    "dropout of a scalar": ("""\
model M {
  def forward(x: f32[]) { return dropout(x, p=0.1) }
}
""", ["run", "--train", "--backend", "triton", "--check"], None),
    "softmax over a one-element row": ("""\
model M {
  def forward(x: f32[2]) { return softmax(max(x)[None]) }
}
""", ["run", "--backend", "triton", "--check"], None),
    "pool over a size-1 axis with a broadcast": ("""\
model M {
  def forward(x: f32[2, 7, 1, 5], y: f32[1, 5]) {
    return max_pool2d(x / y, 3, stride=3, padding=(1, 0))
  }
}
""", ["run", "--backend", "triton", "--check"], None),
    "huge hyperparameter in a parameter shape": ("""\
layer L(n: int) {
  param w: f32[4 * n] = zeros
  def forward(x: f32[4]) -> f32[4] { return x }
}
model M {
  layer l: L(9223372036854775808)
  def forward(x: f32[4]) -> f32[4] { return l(x) }
}
""", ["run"], "parameter shapes must be ints from 1 to"),
    "pool over a size-1 axis, padded, with a broadcast": ("""\
model M {
  def forward(x0: f32[B, 7, 1, 5], x3: f32[1, 5]) {
    let v = dropout(x0, p=0.5) / (1.0 + x3)
    return max_pool2d(v, (2, 3), stride=(1, 3), padding=(1, 0))
  }
}
""", ["run", "--dims", "B=2", "--train", "--backend", "triton", "--check"], None),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_fixed_fuzz_failure(case: str, tmp_path) -> None:
    src, args, error = CASES[case]
    model = tmp_path / "m.ember"
    model.write_text(src)
    r = subprocess.run([sys.executable, "-m", "ember", args[0], str(model), *args[1:]],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert "Traceback" not in r.stderr
    if error is None:
        assert r.returncode == 0 and " ok" in r.stdout, r.stderr[-2000:]
    else:
        assert r.returncode == 1 and error in r.stderr and f"{model}:" in r.stderr
