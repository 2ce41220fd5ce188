"""Golden tests of user-facing errors: the exact text `ember` prints, and its exit code.

Each case writes a small model to a temporary directory and runs the real CLI in
a subprocess from there, so file names in messages are short and stable. A user
error exits 1 with `file:line:col: error: ...`, the source line and a caret (or
`ember: error: ...` when no source line is involved) and never a traceback; a
usage error exits 2.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ember.ir.loc import DSLError, Loc


def ember(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ember", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=120)


def check_error(cwd: Path, args: list[str], expected: str) -> None:
    r = ember(cwd, *args)
    assert "Traceback" not in r.stderr
    assert r.stderr == expected
    assert r.returncode == 1


# ---- compile-time errors: `ember compile m.ember` ----------------------------------

COMPILE_ERRORS = [
    pytest.param("""\
model M {
  def forward(x: f32[B, 4]) -> f32[B, 4] {
    return x +
  }
}
""", """\
m.ember:4:3: error: expected an expression, found '}'
    4 |   }
      |   ^
""", id="syntax"),
    pytest.param("""\
model M {
  def forward(x: f32[B, 4]) -> f32[B, 4] {
    let hidden = relu(x)
    return hiden
  }
}
""", """\
m.ember:4:12: error: unknown name 'hiden'
    4 |     return hiden
      |            ^^^^^
note: did you mean 'hidden'?
""", id="unknown-name"),
    pytest.param("""\
model M {
  def forward(x: f32[B, 4], y: f32[B, 3]) -> f32[B, 4] {
    return x + y
  }
}
""", """\
m.ember:3:12: error: cannot broadcast shapes [B, 4] and [B, 3]: dimension 4 does not match 3
    3 |     return x + y
      |            ^^^^^
""", id="broadcast"),
    pytest.param("""\
model M {
  param w: f32[3, 8] = zeros
  def forward(x: f32[B, 4]) -> f32[B, 8] {
    return x @ w
  }
}
""", """\
m.ember:4:12: error: matmul inner dimensions differ: f32[B, 4] @ f32[3, 8] (4 vs 3)
    4 |     return x @ w
      |            ^^^^^
""", id="matmul"),
    pytest.param("""\
model M {
  def forward(x: f32[B, 4], ids: i32[B, 4]) -> f32[B, 4] {
    return ids + x
  }
}
""", """\
m.ember:3:12: error: add expects operands of one dtype, found i32[B, 4] and f32[B, 4]
    3 |     return ids + x
      |            ^^^^^^^
""", id="dtype"),
    pytest.param("""\
fn double(x: f32[N]) -> f32[N] { return x * 2.0 }
model M {
  def forward(x: f32[B]) -> f32[B] { return double(x, x) }
}
""", """\
m.ember:3:45: error: function 'double' takes 1 argument, found 2
    3 |   def forward(x: f32[B]) -> f32[B] { return double(x, x) }
      |                                             ^^^^^^^^^^^^
note: 'double' is declared at m.ember:1:4
""", id="argument-count"),
    pytest.param("""\
fn head(x: f32[N, 3]) -> f32[N, 3] { return x }
model M {
  def forward(x: f32[B, 4]) -> f32[B, 3] { return head(x) }
}
""", """\
m.ember:3:51: error: argument 'x' of 'head' expects f32[B, 3], found f32[B, 4]
    3 |   def forward(x: f32[B, 4]) -> f32[B, 3] { return head(x) }
      |                                                   ^^^^^^^
note: 'x' is declared at m.ember:1:9
""", id="argument-type"),
    pytest.param("""\
model M {
  def forward(x: f32[B, 4]) -> f32[B, 4] { return softmax(x, dim=1) }
}
""", """\
m.ember:2:51: error: bad arguments to softmax(x, axis=-1): \
got an unexpected keyword argument 'dim'
    2 |   def forward(x: f32[B, 4]) -> f32[B, 4] { return softmax(x, dim=1) }
      |                                                   ^^^^^^^^^^^^^^^^^
""", id="builtin-keyword"),
    pytest.param("""\
layer Dense(n: int) {
  param w: f32[n, n] = zeros
  def forward(x: f32[B, n]) -> f32[B, n] { return x @ w }
}
model M {
  layer fc: Dence(4)
  def forward(x: f32[B, 4]) -> f32[B, 4] { return fc(x) }
}
""", """\
m.ember:6:9: error: unknown layer type 'Dence'
    6 |   layer fc: Dence(4)
      |         ^^
note: did you mean 'Dense'?
""", id="unknown-layer"),
    pytest.param("""\
model M {
  param w: f32[4, 4] = xavier_uniform
  def forward(x: f32[B, 4]) -> f32[B, 4] { return x @ w }
}
""", """\
m.ember:2:24: error: unknown initializer 'xavier_uniform'
    2 |   param w: f32[4, 4] = xavier_uniform
      |                        ^^^^^^^^^^^^^^
note: initializers: zeros, ones, normal, uniform, glorot_uniform, glorot_normal, he_uniform, \
he_normal
""", id="unknown-initializer"),
    pytest.param("""\
model M {
  def forward(x: f32[B, 4]) -> f32[B, 8] {
    return x
  }
}
""", """\
m.ember:3:5: error: function 'forward' declares result f32[B, 8], returns f32[B, 4]
    3 |     return x
      |     ^^^^^^^^
""", id="return-type"),
    pytest.param("""\
model M {
  def forward(x: f32[B, 4]) -> f32[B, 4] {
    h = relu(x)
    return h
  }
}
""", """\
m.ember:3:5: error: assignment to undefined name 'h'
    3 |     h = relu(x)
      |     ^^^^^^^^^^^
note: use 'let h = ...' to define it
""", id="assign-undefined"),
    pytest.param("""\
fn f(x: f32[N]) -> f32[N] { return g(x) }
fn g(x: f32[N]) -> f32[N] { return f(x) }
model M {
  def forward(x: f32[B]) -> f32[B] { return f(x) }
}
""", """\
m.ember:2:36: error: function 'f' calls itself (f -> g -> f); recursion is not supported
    2 | fn g(x: f32[N]) -> f32[N] { return f(x) }
      |                                    ^^^^
""", id="recursion"),
    pytest.param("""\
layer A(n: int) {
  layer inner: A(n)
  def forward(x: f32[B, n]) -> f32[B, n] { return x }
}
model M {
  layer a: A(4)
  def forward(x: f32[B, 4]) -> f32[B, 4] { return a(x) }
}
""", """\
m.ember:2:9: error: layer 'A' contains itself (A -> A)
    2 |   layer inner: A(n)
      |         ^^^^^
""", id="layer-contains-itself"),
]


@pytest.mark.parametrize("source, expected", COMPILE_ERRORS)
def test_compile_error(tmp_path: Path, source: str, expected: str) -> None:
    (tmp_path / "m.ember").write_text(source)
    check_error(tmp_path, ["compile", "m.ember"], expected)


# ---- run-time errors: `ember run m.ember ...` -------------------------------------

SMALL = """\
model M {
  param w: f32[4, 2] = zeros
  param b: f32[2] = zeros
  def forward(x: f32[B, 4]) -> f32[B, 2] {
    return x @ w + b
  }
}
"""

EMBED = """\
model M {
  param tok: f32[10, 4] = normal(0.02)
  def forward(ids: i32[B, T]) -> f32[B, T, 4] { return tok[ids] }
}
"""

RUN_ERRORS = [
    pytest.param(SMALL, ["--entry", "loss", "--dims", "B=2"], """\
m.ember:1:7: error: model 'M' has no function 'loss'
    1 | model M {
      |       ^
note: functions: forward
""", id="no-such-entry"),
    pytest.param(SMALL, ["--input", "x=x35.npy"], """\
m.ember:4:15: error: input 'x' from 'x35.npy' is f32[3, 5], expected f32[B, 4]
    4 |   def forward(x: f32[B, 4]) -> f32[B, 2] {
      |               ^
""", id="input-shape"),
    pytest.param(SMALL, ["--input", "x=nope.npy"], """\
ember: error: input file 'nope.npy' does not exist
""", id="input-file-missing"),
    pytest.param(SMALL, ["--input", "h=x34.npy"], """\
ember: error: 'x34.npy' provides input 'h', but M.forward takes input 'x'
""", id="input-unknown-name"),
    pytest.param(SMALL, ["--inputs", "x34.npy"], """\
ember: error: --inputs expects a .npz archive of named arrays, but 'x34.npy' holds a single array
note: use --input NAME=FILE.npy for one input
""", id="inputs-not-npz"),
    pytest.param(SMALL, ["--dims", "B=2", "--params", "bad_params.npz"], """\
ember: error: parameters in 'bad_params.npz' do not match the model:
  missing: b
  unexpected: bias
  w: expected f32[4, 2], found f32[2, 4]
""", id="params-mismatch"),
    pytest.param(SMALL, [], """\
m.ember:4:15: error: dimension B of input 'x' is not bound; pass --dims B=N or give the input
    4 |   def forward(x: f32[B, 4]) -> f32[B, 2] {
      |               ^
""", id="unbound-dim"),
    pytest.param(EMBED, ["--input", "ids=ids.npy"], """\
m.ember:3:56: error: embedding ids must be in [0, 10), found values in [0, 12]
    3 |   def forward(ids: i32[B, T]) -> f32[B, T, 4] { return tok[ids] }
      |                                                        ^^^^^^^^
""", id="embedding-ids"),
]


@pytest.mark.parametrize("source, args, expected", RUN_ERRORS)
def test_run_error(tmp_path: Path, source: str, args: list[str], expected: str) -> None:
    (tmp_path / "m.ember").write_text(source)
    np.save(tmp_path / "x35.npy", np.zeros((3, 5), np.float32))
    np.save(tmp_path / "x34.npy", np.zeros((3, 4), np.float32))
    np.save(tmp_path / "ids.npy", np.array([[1, 12], [0, 3]], np.int32))
    np.savez(tmp_path / "bad_params.npz", bias=np.zeros(2, np.float32),
             w=np.zeros((2, 4), np.float32))
    check_error(tmp_path, ["run", "m.ember", *args], expected)


def test_missing_model_file(tmp_path: Path) -> None:
    check_error(tmp_path, ["run", "nope.ember"],
                "ember: error: model file 'nope.ember' does not exist\n")


@pytest.mark.parametrize("args, last_line", [
    (["--dims", "B8"], "argument --dims: expected NAME=INT[,NAME=INT...], found 'B8'"),
    (["--input", "x.npy"], "argument --input: expected NAME=FILE.npy, found 'x.npy'"),
])
def test_usage_errors_exit_2(tmp_path: Path, args: list[str], last_line: str) -> None:
    r = ember(tmp_path, "run", "m.ember", *args)
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.startswith("usage: ember run ")
    assert r.stderr.endswith(f"ember run: error: {last_line}\n")
    assert "Traceback" not in r.stderr


# ---- rendering, in process ----------------------------------------------------------

def test_render_without_location() -> None:
    assert DSLError("no model").render() == "error: no model"
    assert DSLError("bad", note="try this").render() == "error: bad\nnote: try this"


def test_render_with_location() -> None:
    loc = Loc("a.ember", 12, 5, 8, "    y = x")
    assert DSLError("oops", loc, "hint").render() == (
        "a.ember:12:5: error: oops\n"
        "   12 |     y = x\n"
        "      |     ^^^\n"
        "note: hint")
    assert str(DSLError("oops", Loc("a.ember", 3, 1))) == "a.ember:3:1: error: oops"
