"""Messages for what Ember does not have: `if`/`while`, loops and shapes sized by
run-time dim arithmetic, partial slices of symbolic axes. Each names the
construct at its location and says what to write instead."""

from __future__ import annotations

import pytest
from util import compile_src

from ember.ir.loc import DSLError
from ember.lang.parser import parse
from ember.lang.values import RUNTIME_DIM_NOTE

NO_IF = "there is no 'if' in Ember: select values with where(cond, a, b)"
NO_WHILE = "there is no 'while' in Ember: loop with 'for t in range(n) { ... }'"


def body(*lines: str) -> str:
    inner = "".join(f"    {line}\n" for line in lines)
    return f"model M {{\n  def forward(x: f32[B, T, 4]) {{\n{inner}  }}\n}}\n"


@pytest.mark.parametrize("src, message, col", [
    (body("if x > 0 { return x }", "return x"), NO_IF, 5),
    (body("if(x > 0) {", "return x", "}"), NO_IF, 5),
    (body("let y = x if true else x", "return y"), NO_IF, 15),
    (body("while x { }", "return x"), NO_WHILE, 5),
])
def test_python_statements_say_what_to_write(src: str, message: str, col: int) -> None:
    with pytest.raises(DSLError) as e:
        parse(src, "m.ember")
    assert e.value.message == message
    assert (e.value.loc.line, e.value.loc.col) == (3, col)


def test_if_as_a_name_still_works() -> None:
    parse(body("let if = x", "return if"), "m.ember")


@pytest.mark.parametrize("line, message, note", [
    ("for t in range(T - 1) { }",
     "range(n) needs an int or a dimension, found the run-time value T - 1", RUNTIME_DIM_NOTE),
    ("let z = zeros(B, T - 1)",
     "shape entries must be non-negative ints or dimensions, found the run-time value T - 1",
     RUNTIME_DIM_NOTE),
    ("let z = x[:, -2:, :]",
     "the symbolic dimension T can only be sliced whole, with ':' or '::-1'", ""),
    ("let z = x[:, ::-2, :]",
     "the symbolic dimension T can only be sliced whole, with ':' or '::-1'", ""),
    ("let z = x[:, ::0, :]", "slice step cannot be zero", ""),
    ("let z = x[:, (T - 1) / 2, :]", "tensor indices must be integers, found f64[]", ""),
])
def test_dim_arithmetic_limits(line: str, message: str, note: str) -> None:
    with pytest.raises(DSLError) as e:
        compile_src(body(line, "return x"))
    assert (e.value.message, e.value.note) == (message, note)
    assert e.value.loc.line == 3
