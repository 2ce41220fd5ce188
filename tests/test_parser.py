"""Tests for the Ember front end: grammar, AST shape, locations and syntax errors."""

from __future__ import annotations

import textwrap

import pytest

from ember.ir.loc import DSLError
from ember.lang import ast
from ember.lang.parser import parse

EXAMPLE = """\
# comments run to end of line
const EPS = 1e-5                  # top-level constant

fn gelu_tanh(x: f32[N]) -> f32[N] { return 0.5 * x * (1 + tanh(0.79788456 *
                                                                (x + 0.044715 * x ** 3))) }

layer Dense(n_in: int, n_out: int) {
  param w: f32[n_in, n_out] = he_normal
  param b: f32[n_out] = zeros
  param s: f32[n_out] = normal(mean=0, std=0.02)
  def forward(x: f32[B, n_in]) -> f32[B, n_out] {
    return x @ w + b
  }
}

model Mlp {
  const H = 128
  layer fc1: Dense(64, H)
  layer blocks: Block(32, 4)[2]
  param w2: f32[H, 10] = glorot_uniform
  def forward(x: f32[B, 64]) -> f32[B, 10] {
    let h = relu(fc1(x))
    let h2 = fc1.forward(x)
    for blk in blocks { h = blk(h) }
    return dropout(h, p=0.1, train=1) @ w2
  }
  def loss(x: f32[B, 64], y: i32[B]) -> f32[] { return cross_entropy(forward(x), y) }
  def two(x: f32[B, T, 4]) -> (f32[B, 4], f32[B, 4]) {
    let h = zeros(B, 4)
    let c = zeros(B, 4)
    for t in range(T) {
      let i, f = split(x[:, t, :], 2, axis=-1)
      h, c = f * c, i
    }
    return h, c
  }
}
"""


def sx(node: object) -> str:
    """A compact s-expression for an expression, so tests can state structure in one line."""
    match node:
        case ast.Num(value=v) | ast.Bool(value=v):
            return str(v).lower() if isinstance(v, bool) else repr(v)
        case ast.Name(id=name):
            return name
        case ast.BinOp(op=op, lhs=lhs, rhs=rhs):
            return f"({op} {sx(lhs)} {sx(rhs)})"
        case ast.UnaryOp(op=op, operand=operand):
            return f"(neg {sx(operand)})" if op == "-" else f"({op} {sx(operand)})"
        case ast.Call(fn=fn, args=args, kwargs=kwargs):
            parts = [sx(a) for a in args] + [f"{k}={sx(v)}" for k, v in kwargs]
            return f"(call {' '.join([sx(fn), *parts])})"
        case ast.Index(value=value, items=items):
            return f"(index {' '.join([sx(value), *map(sx, items)])})"
        case ast.Slice(start=start, stop=stop, step=step):
            return ":".join("" if p is None else sx(p) for p in (start, stop, step))
        case ast.EllipsisItem():
            return "..."
        case ast.NewAxis():
            return "None"
        case ast.TupleExpr(items=items):
            return f"(tuple {' '.join(map(sx, items))})"
        case ast.Attr(value=value, name=name):
            return f"(. {sx(value)} {name})"
    raise AssertionError(f"not an expression: {node!r}")


def expr(text: str) -> ast.Expr:
    """Parse `text` as the single returned expression of a function."""
    (ret,) = parse(f"fn f() {{ return {text} }}", "e.em").items[0].body
    assert isinstance(ret, ast.Return) and len(ret.values) == 1
    return ret.values[0]


def body(text: str) -> tuple[ast.Stmt, ...]:
    """Parse `text` as the body of a function."""
    return parse(f"fn f() {{\n{text}\n}}", "b.em").items[0].body


def error(source: str) -> str:
    """The rendered DSLError for `source`, which must fail to parse."""
    with pytest.raises(DSLError) as info:
        parse(textwrap.dedent(source), "t.em")
    return info.value.render()


# ---------------------------------------------------------------- whole program


def test_example_top_level_items() -> None:
    program = parse(EXAMPLE, "mlp.em")
    assert program.file == "mlp.em" and program.source == EXAMPLE
    const, gelu, dense, mlp = program.items
    assert const == ast.ConstDef("EPS", ast.Num(1e-5, const.value.loc), const.loc)
    assert isinstance(gelu, ast.FnDef) and gelu.name == "gelu_tanh"
    assert sx(gelu.body[0].values[0]) == (
        "(* (* 0.5 x) (+ 1 (call tanh (* 0.79788456 (+ x (* 0.044715 (** x 3)))))))"
    )
    assert (dense.name, dense.is_model, mlp.name, mlp.is_model) == ("Dense", False, "Mlp", True)
    assert [(a.name, a.type.dtype, a.type.dims) for a in dense.hparams] == [
        ("n_in", "int", None),
        ("n_out", "int", None),
    ]
    assert mlp.hparams == ()


def test_example_layer_members() -> None:
    _, _, dense, _ = parse(EXAMPLE, "mlp.em").items
    w, b, s, forward = dense.members
    assert (w.name, w.type.dtype, [sx(d) for d in w.type.dims], sx(w.init)) == (
        "w",
        "f32",
        ["n_in", "n_out"],
        "he_normal",
    )
    assert sx(b.init) == "zeros"
    assert sx(s.init) == "(call normal mean=0 std=0.02)"
    assert isinstance(forward, ast.FnDef)
    assert [sx(d) for d in forward.ret[0].dims] == ["B", "n_out"]
    assert sx(forward.body[0].values[0]) == "(+ (@ x w) b)"


def test_example_model_members() -> None:
    mlp = parse(EXAMPLE, "mlp.em").items[-1]
    const, fc1, blocks, w2, forward, loss, two = mlp.members
    assert (const.name, sx(const.value)) == ("H", "128")
    assert (fc1.layer, [sx(a) for a in fc1.args], fc1.kwargs, fc1.count) == (
        "Dense",
        ["64", "H"],
        (),
        None,
    )
    assert (blocks.layer, sx(blocks.count)) == ("Block", "2")
    assert sx(w2.init) == "glorot_uniform"
    let_h, let_h2, loop, ret = forward.body
    assert (let_h.targets, let_h.is_new, sx(let_h.value)) == (
        ("h",),
        True,
        "(call relu (call fc1 x))",
    )
    assert sx(let_h2.value) == "(call (. fc1 forward) x)"
    assert (loop.var, sx(loop.iter)) == ("blk", "blocks")
    assert loop.body == (ast.Let(("h",), loop.body[0].value, False, loop.body[0].loc),)
    assert sx(ret.values[0]) == "(@ (call dropout h p=0.1 train=1) w2)"
    assert loss.ret[0].dims == ()
    assert [a.type.dtype for a in loss.args] == ["f32", "i32"]
    assert [len(t.dims) for t in two.ret] == [2, 2]


def test_example_loop_and_tuples() -> None:
    two = parse(EXAMPLE, "mlp.em").items[-1].members[-1]
    _, _, loop, ret = two.body
    assert sx(loop.iter) == "(call range T)"
    unpack, assign = loop.body
    assert (unpack.targets, unpack.is_new) == (("i", "f"), True)
    assert sx(unpack.value) == "(call split (index x :: t ::) 2 axis=(neg 1))"
    assert (assign.targets, assign.is_new, sx(assign.value)) == (
        ("h", "c"),
        False,
        "(tuple (* f c) i)",
    )
    assert [sx(v) for v in ret.values] == ["h", "c"]


# ------------------------------------------------------------------ expressions


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("-x ** 2", "(neg (** x 2))"),
        ("2 ** -x", "(** 2 (neg x))"),
        ("a ** b ** c", "(** a (** b c))"),
        ("a + b * c @ d", "(+ a (@ (* b c) d))"),
        ("x @ w + b", "(+ (@ x w) b)"),
        ("a - b - c", "(- (- a b) c)"),
        ("a // b % c / d", "(/ (% (// a b) c) d)"),
        ("-a * -b", "(* (neg a) (neg b))"),
        ("a + b <= c * 2", "(<= (+ a b) (* c 2))"),
        ("(a < b) == c", "(== (< a b) c)"),
        ("a != -b", "(!= a (neg b))"),
        ("(a + b) * c", "(* (+ a b) c)"),
        ("f(a, b, k=v,)", "(call f a b k=v)"),
        ("f()", "(call f)"),
        ("m.fc.forward(x)[0]", "(index (call (. (. m fc) forward) x) 0)"),
        ("x[..., None, ::2, 1:3, :t, 1:, ::, 0]", "(index x ... None ::2 1:3: :t: 1:: :: 0)"),
        ("(a,)", "(tuple a)"),
        ("(a, b,)", "(tuple a b)"),
        ("true", "true"),
        ("false", "false"),
        ("trueish", "trueish"),
        ("(\n  a +\n  b\n)", "(+ a b)"),
    ],
)
def test_expression_structure(text: str, expected: str) -> None:
    assert sx(expr(text)) == expected


@pytest.mark.parametrize(
    ("text", "value"),
    [("7", 7), ("1.0", 1.0), ("1e-5", 1e-5), (".5", 0.5), ("2.", 2.0), ("3E2", 300.0)],
)
def test_numbers(text: str, value: int | float) -> None:
    num = expr(text)
    assert isinstance(num, ast.Num) and num.value == value and type(num.value) is type(value)


# ------------------------------------------------------------------- statements


def test_semicolons_and_one_line_blocks() -> None:
    program = parse("fn f(x: f32[N]) { let a = x; let b = a;; return b; }", "s.em")
    assert [type(s).__name__ for s in program.items[0].body] == ["Let", "Let", "Return"]


def test_blank_lines_comments_and_brace_placement() -> None:
    source = """
        # leading comment

        def f(x: f32[N]) -> f32[N]
        {

          # inside
          let y = f(x,
                    axis=0)   # newline inside parentheses
          return y

        }
        layer Empty { }
        model M {}
    """
    program = parse(textwrap.dedent(source), "c.em")
    assert [item.name for item in program.items] == ["f", "Empty", "M"]
    assert program.items[1].hparams == () and program.items[1].members == ()


def test_assignment_forms() -> None:
    plain, paren, let_tuple = body("a = x\n(b, c) = y, z\nlet d, e = (p, q)")
    assert (plain.targets, plain.is_new, sx(plain.value)) == (("a",), False, "x")
    assert (paren.targets, sx(paren.value)) == (("b", "c"), "(tuple y z)")
    assert (let_tuple.targets, let_tuple.is_new, sx(let_tuple.value)) == (
        ("d", "e"),
        True,
        "(tuple p q)",
    )


def test_nested_for_and_multiple_returns() -> None:
    (loop, ret) = body("for i in range(2 * T) { for j in xs { a = a + j } }\nreturn a, b, c")
    assert sx(loop.iter) == "(call range (* 2 T))"
    assert isinstance(loop.body[0], ast.For) and loop.body[0].var == "j"
    assert len(ret.values) == 3


def test_types_and_sublayer_kwargs() -> None:
    source = """
        layer Block(d: int, heads: int, p: float) {
          param q: f64[4*d, d//heads] = uniform(-0.1, 0.1)
          param m: bool[d]
          layer attn: Attention(d, heads=heads)[heads - 1]
          fn f(x: i64[], y: f32[d]) { return x }
        }
    """
    block = parse(textwrap.dedent(source), "t.em").items[0]
    assert [a.type.dtype for a in block.hparams] == ["int", "int", "float"]
    q, m, attn, f = block.members
    assert [sx(d) for d in q.type.dims] == ["(* 4 d)", "(// d heads)"]
    assert sx(q.init) == "(call uniform (neg 0.1) 0.1)"
    assert (m.type.dtype, m.init) == ("bool", None)
    assert [sx(a) for a in attn.args] == ["d"]
    assert [(k, sx(v)) for k, v in attn.kwargs] == [("heads", "heads")]
    assert sx(attn.count) == "(- heads 1)"
    assert f.ret is None and f.args[0].type == ast.TypeAnn("i64", (), f.args[0].type.loc)


def test_empty_source() -> None:
    assert parse("", "e.em").items == ()
    assert parse("\n# nothing\n\n", "e.em").items == ()


# -------------------------------------------------------------------- locations


def test_locations() -> None:
    program = parse(EXAMPLE, "mlp.em")
    dense, mlp = program.items[2], program.items[3]
    assert (dense.loc.line, dense.loc.col, dense.loc.end_col) == (7, 7, 12)  # the name
    assert dense.loc.source_line == "layer Dense(n_in: int, n_out: int) {"
    assert dense.loc.file == "mlp.em"
    ret = dense.members[3].body[0]
    assert (ret.loc.line, ret.loc.col, ret.loc.end_col) == (12, 5, 21)  # `return x @ w + b`
    plus = ret.values[0]
    assert (plus.loc.col, plus.loc.end_col) == (12, 21)  # `x @ w + b`
    assert (plus.rhs.loc.line, plus.rhs.loc.col, plus.rhs.loc.end_col) == (12, 20, 21)
    loop = mlp.members[4].body[2]
    assert (loop.loc.line, loop.loc.col, loop.loc.end_col) == (24, 5, 22)  # `for blk in blocks`
    blocks_type = mlp.members[4].args[0].type
    assert (blocks_type.loc.col, blocks_type.loc.end_col) == (18, 28)  # `f32[B, 64]`


def test_multiline_span_is_cut_at_first_line() -> None:
    (let,) = body("let y = f(a,\n  b)")
    assert (let.loc.line, let.loc.col, let.loc.end_col) == (2, 1, 13)
    assert let.value.args[1].loc.line == 3


def test_walk_visits_every_node() -> None:
    program = parse(EXAMPLE, "mlp.em")
    names = {n.id for n in ast.walk(program) if isinstance(n, ast.Name)}
    assert {"he_normal", "blocks", "cross_entropy", "T", "n_in"} <= names
    assert "axis" not in names  # keyword names are strings in Call.kwargs, not Name nodes
    assert all(isinstance(n, ast.Node) for n in ast.walk(program))


def test_nodes_are_frozen_and_hashable() -> None:
    program = parse(EXAMPLE, "mlp.em")
    assert hash(program) == hash(parse(EXAMPLE, "mlp.em"))
    with pytest.raises(AttributeError):
        program.items[0].name = "other"  # type: ignore[misc]


def test_long_operator_chain_does_not_recurse() -> None:
    tree = expr(" + ".join(["a"] * 3000))
    assert sum(isinstance(n, ast.Name) for n in ast.walk(tree)) == 3000


# ----------------------------------------------------------------------- errors

GOLDEN_ERRORS = [
    (
        """\
        fn f(x: f32[N]) -> f32[N] {
          let y = }
        """,
        """\
t.em:2:11: error: expected an expression, found '}'
    2 |   let y = }
      |           ^""",
    ),
    (
        "fn f(x: f32[N]) -> f32[N] return x }\n",
        """\
t.em:1:27: error: expected '{' after the function signature, found 'return'
    1 | fn f(x: f32[N]) -> f32[N] return x }
      |                           ^^^^^^""",
    ),
    (
        """\
        model M {
          def f(x: f32[N]) -> f32[N] {
            for i in range(3) {
              let y = x
        """,
        """\
t.em:4:16: error: unexpected end of file: expected '}' to close the block opened at line 3
    4 |       let y = x
      |                ^""",
    ),
    (
        "fn f(a: f32[], b: f32[], c: f32[]) { return a < b < c }\n",
        """\
t.em:1:51: error: chained comparison 'a < b < c' is not allowed; use parentheses
    1 | fn f(a: f32[], b: f32[], c: f32[]) { return a < b < c }
      |                                                   ^""",
    ),
    (
        "fn f(x: f32[N]) { return +x }\n",
        """\
t.em:1:26: error: expected an expression, found '+' (there is no unary '+')
    1 | fn f(x: f32[N]) { return +x }
      |                          ^""",
    ),
    (
        "fn f(x: f32[N]) { let y = x 2 }\n",
        """\
t.em:1:29: error: expected an operator, ',', '}' or end of line, found '2'
    1 | fn f(x: f32[N]) { let y = x 2 }
      |                             ^""",
    ),
    (
        "fn f(x: f32[N]) { let y = g(x, 2]\n}\n",
        """\
t.em:1:33: error: expected ')' to close the '(' opened at line 1, found ']'
    1 | fn f(x: f32[N]) { let y = g(x, 2]
      |                                 ^""",
    ),
    (
        "fn f(x: f32[N]) { let y = x $ 2 }\n",
        """\
t.em:1:29: error: unexpected character '$'
    1 | fn f(x: f32[N]) { let y = x $ 2 }
      |                             ^""",
    ),
    (
        "model M(n: int) { }\n",
        """\
t.em:1:8: error: expected '{' after the model name, found '('
    1 | model M(n: int) { }
      |        ^""",
    ),
    (
        "layer L { param w: f8[4] = zeros }\n",
        """\
t.em:1:20: error: unknown type 'f8'; expected one of f32, f64, bf16, f16, i32, i64, bool, int, float
    1 | layer L { param w: f8[4] = zeros }
      |                    ^^""",
    ),
    (
        "layer L { param w: f32[4] = 0.5 }\n",
        """\
t.em:1:29: error: expected an initializer name or call such as 'zeros' or \
'normal(0.02)', found '0.5'
    1 | layer L { param w: f32[4] = 0.5 }
      |                             ^^^""",
    ),
    (
        "fn f(x: f32[N]) { return g(axis=1, x) }\n",
        """\
t.em:1:36: error: positional argument after keyword argument
    1 | fn f(x: f32[N]) { return g(axis=1, x) }
      |                                    ^""",
    ),
    (
        "fn f(x: f32[N]) { return x }  fn g(x: f32[N]) { return x }\n",
        """\
t.em:1:31: error: expected end of line or end of file, found 'fn'
    1 | fn f(x: f32[N]) { return x }  fn g(x: f32[N]) { return x }
      |                               ^^""",
    ),
    (
        "let x = 3\n",
        """\
t.em:1:1: error: expected 'const', 'def', 'fn', 'layer', 'model' or end of file, found 'let'
    1 | let x = 3
      | ^^^""",
    ),
    (
        "fn f(x: f32[N]) {\n  return x +\n    1\n}\n",
        """\
t.em:2:13: error: expected an expression, found end of line
    2 |   return x +
      |             ^""",
    ),
    (
        "fn f(x: f32[N]) { for i in range(3) return x }\n",
        """\
t.em:1:37: error: expected '{' to start the loop body, found 'return'
    1 | fn f(x: f32[N]) { for i in range(3) return x }
      |                                     ^^^^^^""",
    ),
]


@pytest.mark.parametrize(("source", "expected"), GOLDEN_ERRORS)
def test_golden_error(source: str, expected: str) -> None:
    assert error(source) == expected


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("const X =", "unexpected end of file: expected an expression"),
        ("const X = 3\n}", "unmatched '}'"),
        ("fn f(x: f32[N]) { return x) }", "unmatched ')'"),
        (
            "fn f(x: f32[N]) { return (x }",
            "expected ')' to close the '(' opened at line 1, found '}'",
        ),
        ("fn f(x: f32) { return x }", "expected dimensions after 'f32'"),
        ("layer L(a: int[3]) { }", "type 'int' takes no dimensions"),
        ("fn f(x: f32[N]) { let 3 = x }", "expected '(' or a name, found '3'"),
        ("fn f(x: f32[N]) { return None }", "expected an expression, found 'None'"),
        ("fn f(x: f32[N]) { return x[1:2:3:4] }", "expected ',' or ']', found ':'"),
        ("fn f(x: f32[N]) { return (x; 1) }", "found ';'"),
        ("layer L(n: int) param w: f32[n] }", "expected '{' after the layer header, found 'param'"),
    ],
)
def test_error_messages(source: str, message: str) -> None:
    assert message in error(source)


def test_every_prefix_fails_cleanly() -> None:
    """Truncating a valid program anywhere gives a DSLError, never a lark exception."""
    for end in range(0, len(EXAMPLE), 5):
        try:
            parse(EXAMPLE[:end], "p.em")
        except DSLError as e:
            assert e.loc.line >= 1 and e.render().startswith("p.em:")
