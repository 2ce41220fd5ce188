"""Duplicate declarations (lang/declarations.py): each is a located error at the
second declaration whose note points at the first; names in different
namespaces may repeat."""

from __future__ import annotations

import pytest

from ember.ir.loc import DSLError
from ember.lang.parser import parse

LIN = "layer Lin(n: int) { param w: f32[n] = zeros }\n"
FWD = "  def forward(x: f32[3]) { return x }\n"


def model(*members: str, top: str = "") -> str:
    body = "".join(f"  {m}\n" for m in members)
    return f"{top}model M {{\n{body}{FWD}}}\n{LIN}"


DUPLICATES = [
    # (source, message, (line, col) of the second declaration, (line, col) of the first)
    (model("param w: f32[3] = zeros", "param w: f32[3] = ones"),
     "'w' is already declared as a parameter", (3, 9), (2, 9)),
    (model("param w: f32[3] = zeros", "layer w: Lin(3)"),
     "'w' is already declared as a parameter", (3, 9), (2, 9)),
    (model("buffer s: f32[3] = zeros", "param s: f32[3] = zeros"),
     "'s' is already declared as a buffer", (3, 9), (2, 10)),
    (model("layer a: Lin(3)", "layer a: Lin(4)"),
     "'a' is already declared as a layer", (3, 9), (2, 9)),
    (model("const k = 2", "const k = 3"),
     "'k' is already declared as a constant", (3, 9), (2, 9)),
    (model("def forward(x: f32[3]) { return x * 2.0 }"),
     "'forward' is already declared as a function", (3, 7), (2, 7)),
    (model(top="const k = 2\nconst k = 3\n"),
     "'k' is already declared as a constant", (2, 7), (1, 7)),
    (model(top="def f(x: f32[3]) { return x }\nconst f = 1\n"),
     "'f' is already declared as a function", (2, 7), (1, 5)),
    (model() + LIN, "'Lin' is already declared as a layer type", (5, 7), (4, 7)),
    (model(top="layer M { param v: f32[1] = zeros }\n"),
     "'M' is already declared as a layer type", (2, 7), (1, 7)),
    ("model M {\n  def forward(x: f32[3], x: f32[3]) { return x }\n}\n",
     "'x' is already declared as an argument", (2, 26), (2, 15)),
    ("layer L(n: int) { const n = 2\n def forward(x: f32[3]) { return x } }\n"
     f"model M {{\n  layer l: L(1)\n{FWD}}}\n",
     "'n' is already declared as a hyperparameter", (1, 25), (1, 9)),
]


@pytest.mark.parametrize("src, message, second, first", DUPLICATES,
                         ids=[d[1] + f" {k}" for k, d in enumerate(DUPLICATES)])
def test_duplicate_is_located(src: str, message: str, second: tuple[int, int],
                              first: tuple[int, int]) -> None:
    with pytest.raises(DSLError) as e:
        parse(src, "d.ember")
    assert e.value.message == message
    assert (e.value.loc.line, e.value.loc.col) == second
    assert e.value.note == f"first declared at d.ember:{first[0]}:{first[1]}"


def test_same_name_in_other_namespaces_is_fine() -> None:
    """A layer type and an instance, a global and a member const, two layers'
    parameters, and an argument named like a parameter may share a name."""
    src = ("const n = 3\n"
           "layer Lin(n: int) { param w: f32[n] = zeros\n"
           "  def forward(w: f32[n]) { return w } }\n"
           "model M {\n  const n = 4\n  layer Lin: Lin(3)\n  param w: f32[3] = zeros\n"
           "  def forward(x: f32[3]) { return Lin(x) + w }\n}\n")
    parse(src, "ok.ember")
