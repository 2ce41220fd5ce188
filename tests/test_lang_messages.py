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


@pytest.mark.parametrize("call, message", [
    ("x % 2.0", "'//' and '%' on tensors need i32 operands, found f64[B, T, 4]"),
    ("pad(x, (1,))", "pad amounts come in (left, right) pairs, at most one per axis: 1 for a "
                     "tensor of rank 3"),
    ('pad(x, (1, 1), mode="wrap")', 'pad mode must be "constant" or "reflect", found the '
                                    'string "wrap"'),
    ('pad(x, (4, 0), mode="reflect")', "reflect padding (4, 0) must be non-negative and less "
                                       "than the size 4 of axis 2"),
    ("split(x, (1, 2), axis=2)", "split: sizes (1, 2) must be non-negative and add up to the "
                                 "size 4 of axis 2"),
    ("clamp(x)", "clamp needs min=, max= or both"),
    ("stack(x, x[:, :, 1:])", "stack needs tensors of one shape, found f64[B, T, 4] and "
                              "f64[B, T, 3]"),
    ("var(x, correction=-1)", "correction must be a non-negative int, found the number -1"),
    ("dropout(x, p=1.5)", "dropout probability must be in [0, 1], found the number 1.5"),
    ("adaptive_avg_pool2d(reshape(x, B, 1, T, 4), 3)",
     "adaptive_avg_pool2d expects [N, C, H, W] with static H and W, found f64[B, 1, T, 4]"),
    ("group_norm(x, 3, x, x)", "group_norm expects [N, C, ...] with C divisible by groups=3, "
                               "found f64[B, T, 4]"),
    ("conv1d(x[:, :, 0], x)", "conv1d expects x [N, C, L] and w [O, C/groups, K], found "
                              "f64[B, T] and f64[B, T, 4]"),
])
def test_new_builtins_reject_bad_input(call: str, message: str) -> None:
    with pytest.raises(DSLError) as e:
        compile_src(body(f"let z = {call}", "return x"))
    assert e.value.message == message
    assert e.value.loc.line == 3
