"""Tests of the IR: the printer's golden text, the verifier, and each pass on tiny graphs.

Pass tests follow the tinygrad / xDSL style: build a three-node graph with
`Builder`, run one pass, compare the printed IR with the expected text.
"""

from __future__ import annotations

import textwrap
from typing import Any

import pytest
from util import MODEL_NAMES, MODELS  # tests/util.py

from ember import api
from ember.ir.dtypes import DType
from ember.ir.graph import Builder, Graph, Node, TensorType
from ember.ir.ops import Op
from ember.ir.printer import print_graph
from ember.ir.verify import VerifyError, verify
from ember.lang.emitter import Options
from ember.lang.lower import lower
from ember.lang.parser import parse
from ember.passes.cleanup import cse, dce
from ember.passes.inline import inline
from ember.passes.pipeline import PIPELINE, optimize
from ember.passes.shapes import bind_dims, infer_shapes
from ember.passes.simplify import fold_constants, simplify

F32, I32 = DType.F32, DType.I32


def ir(text: str) -> str:
    return textwrap.dedent(text).strip("\n")


def inp(b: Builder, name: str, shape: tuple[Any, ...], dtype: DType = F32) -> int:
    return b.add(Op.INPUT, (), {"name": name, "shape": shape, "dtype": dtype})


def const(b: Builder, value: Any, dtype: DType = F32) -> int:
    return b.add(Op.CONST, (), {"value": value, "dtype": dtype})


def graph(b: Builder, inputs: tuple[int, ...], *outputs: int) -> Graph:
    return verify(b.build(inputs, outputs))


# ---- printer: golden text of a small program -------------------------------------

TINY = """\
fn scale(v: f32[N, 4], k: float) -> f32[N, 4] { return v * k }

layer Cell(d: int) {
  param w: f32[d, d] = glorot_uniform
  def forward(x: f32[B, d], h: f32[B, d]) -> f32[B, d] { return tanh(x @ w + h) }
}

model Tiny {
  layer cell: Cell(4)
  def forward(x: f32[B, T, 4]) -> f32[B, 4] {
    let h = zeros(B, 4)
    for t in range(T) { h = cell(x[:, t, :], h) }
    return scale(-(-h), 1.0) + 0.0
  }
}
"""

TINY_IR = """\
graph Tiny.forward(x) {
  %0:f32[B, T, 4] = input name=x                           # t.ember:10:15
  %1:f32[B, 4] = full value=0.0                            # t.ember:11:13
  %2:(f32[B, 4]) = loop %1 %0 length=T n_carry=1           # t.ember:12:5
    graph loop_body(t, h, x) {
      %0:i32[] = input name=t                                  # t.ember:12:5
      %1:f32[B, 4] = input name=h                              # t.ember:12:5
      %2:f32[B, T, 4] = input name=x                           # t.ember:12:25
      %3:f32[B, 4] = index %2 %0 axis=1                        # t.ember:12:34
      %4:(f32[B, 4]) = call %3 %1 fn=Cell.forward prefix=cell  # t.ember:12:29
        graph Cell.forward(x, h) {
          %0:f32[B, 4] = input name=x                              # t.ember:5:15
          %1:f32[B, 4] = input name=h                              # t.ember:5:29
          %2:f32[4, 4] = param name=w init=(glorot_uniform,)       # t.ember:4:9
          %3:f32[B, 4] = matmul %0 %2                              # t.ember:5:70
          %4:f32[B, 4] = add %3 %1                                 # t.ember:5:70
          %5:f32[B, 4] = tanh %4                                   # t.ember:5:65
          return %5
        }
      %5:f32[B, 4] = get %4 index=0                            # t.ember:12:29
      return %5
    }
  %3:f32[B, 4] = get %2 index=0                            # t.ember:12:5
  %4:f32[B, 4] = neg %3                                    # t.ember:13:20
  %5:f32[B, 4] = neg %4                                    # t.ember:13:18
  %6:(f32[B, 4]) = call %5 fn=scale prefix=''              # t.ember:13:12
    graph scale(v) {
      %0:f32[B, 4] = input name=v                              # t.ember:1:10
      %1:f32[] = const value=1.0                               # t.ember:1:56
      %2:f32[B, 4] = mul %0 %1                                 # t.ember:1:56
      return %2
    }
  %7:f32[B, 4] = get %6 index=0                            # t.ember:13:12
  %8:f32[] = const value=0.0                               # t.ember:13:12
  %9:f32[B, 4] = add %7 %8                                 # t.ember:13:12
  return %9
}"""

# inlined (cell.w), --dims T=3 bound, -(-h) * 1.0 + 0.0 simplified to h, dead nodes gone
TINY_OPT = """\
graph Tiny.forward(x) {
  %0:f32[B, 3, 4] = input name=x                           # t.ember:10:15
  %1:f32[B, 4] = full value=0.0                            # t.ember:11:13
  %2:(f32[B, 4]) = loop %1 %0 length=3 n_carry=1           # t.ember:12:5
    graph loop_body(t, h, x) {
      %0:i32[] = input name=t                                  # t.ember:12:5
      %1:f32[B, 4] = input name=h                              # t.ember:12:5
      %2:f32[B, 3, 4] = input name=x                           # t.ember:12:25
      %3:f32[B, 4] = index %2 %0 axis=1                        # t.ember:12:34
      %4:f32[4, 4] = param name=cell.w init=(glorot_uniform,)  # t.ember:4:9
      %5:f32[B, 4] = matmul %3 %4                              # t.ember:5:70
      %6:f32[B, 4] = add %5 %1                                 # t.ember:5:70
      %7:f32[B, 4] = tanh %6                                   # t.ember:5:65
      return %7
    }
  %3:f32[B, 4] = get %2 index=0                            # t.ember:12:5
  return %3
}"""


def test_printer_golden_ir_and_opt() -> None:
    program = parse(TINY, "t.ember")
    assert print_graph(api.compile_program(program, stage="ir")) == TINY_IR
    assert print_graph(api.compile_program(program, stage="opt", dims={"T": 3})) == TINY_OPT


def test_printer_without_locations() -> None:
    g = api.compile_program(parse(TINY, "t.ember"), stage="opt", dims={"T": 3})
    text = print_graph(g, with_loc=False)
    assert "#" not in text
    assert text.splitlines()[3] == "  %2:(f32[B, 4]) = loop %1 %0 length=3 n_carry=1"


# ---- verifier ----------------------------------------------------------------------

def _x_exp() -> tuple[Node, Node]:
    x = Node(Op.INPUT, (), {"name": "x", "shape": (4,), "dtype": F32}, TensorType((4,), F32))
    e = Node(Op.EXP, (0,), {}, TensorType((4,), F32))
    return x, e


def test_verifier_accepts_a_well_formed_graph() -> None:
    x, e = _x_exp()
    g = Graph("g", (x, e), (0,), (1,), ("y",))
    assert verify(g) is g


@pytest.mark.parametrize("g, message", [
    pytest.param(Graph("g", (_x_exp()[1], _x_exp()[0]), (1,), (0,), ("y",)),
                 "g: %0 (exp) uses a value not defined before it: (0,)", id="use-before-def"),
    pytest.param(Graph("g", (_x_exp()[0], Node(Op.EXP, (0,), {}, TensorType((4,), I32))),
                       (0,), (1,), ("y",)),
                 "g: %1 (exp) has type i32[4], its shape rule gives f32[4]", id="wrong-type"),
    pytest.param(Graph("g", (_x_exp()[0], Node(Op.EXP, (0,), {}, TensorType((), F32))),
                       (0,), (1,), ("y",)),
                 "g: %1 (exp) has type f32[], its shape rule gives f32[4]", id="wrong-shape"),
    pytest.param(Graph("g", _x_exp(), (1,), (1,), ("y",)),
                 "g: input %1 is not an INPUT node", id="input-not-INPUT"),
    pytest.param(Graph("g", _x_exp(), (), (1,), ("y",)),
                 "g: INPUT %0 is not listed in the graph inputs", id="unlisted-INPUT"),
    pytest.param(Graph("g", _x_exp(), (0,), (2,), ("y",)),
                 "g: output %2 does not exist", id="missing-output"),
    pytest.param(Graph("g", _x_exp(), (0,), (1,), ()),
                 "g: 1 outputs but 0 output names", id="output-names"),
    pytest.param(Graph("g", (_x_exp()[0], Node(Op.GET, (0,), {"index": 0},
                                               TensorType((4,), F32))), (0,), (1,), ("y",)),
                 "g: %1 (get) reads %0 of type f32[4]: only GET reads the tuple a region "
                 "produces, and GET reads nothing else", id="get-of-tensor"),
    pytest.param(Graph("g", (_x_exp()[0], Node(Op.SUM, (0,), {}, TensorType((), F32))),
                       (0,), (1,), ("y",)),
                 "g: %1 (sum) is malformed: KeyError: 'axes'", id="missing-attr"),
    pytest.param(Graph("g", (_x_exp()[0], Node(Op.MATMUL, (0, 0), {}, TensorType((), F32))),
                       (0,), (1,), ("y",)),
                 "g: %1 (matmul) is ill-typed: matmul needs operands of rank >= 2, "
                 "found f32[4] @ f32[4]", id="ill-typed"),
])
def test_verifier_rejects(g: Graph, message: str) -> None:
    with pytest.raises(VerifyError) as info:
        verify(g)
    assert str(info.value) == message


def _loop_body(carry: tuple[Any, ...], out: tuple[Any, ...], step: bool = True) -> Graph:
    """A loop body: (t, h) -> h + 1, with h of shape `carry` and the result reshaped to `out`."""
    b = Builder("loop_body")
    ins = (inp(b, "t", (), I32),) if step else ()
    h = inp(b, "h", carry)
    y = b.add(Op.ADD, (h, const(b, 1.0)))
    if out != carry:
        y = b.add(Op.RESHAPE, (y,), {"shape": out})
    return b.build((*ins, h), (y,), ("h",))


def _loop(body: Graph, n_carry: int = 1, n_xs: int = 0) -> Graph:
    b = Builder("g")
    x = inp(b, "x", (2, 3))
    loop = b.add(Op.LOOP, (x,), {"length": 5, "n_carry": n_carry, "n_xs": n_xs, "body": body})
    return b.build((x,), (b.add(Op.GET, (loop,), {"index": 0}),))


def test_verifier_accepts_a_loop() -> None:
    verify(_loop(_loop_body((2, 3), (2, 3))))


@pytest.mark.parametrize("g, message", [
    pytest.param(_loop(_loop_body((2, 3), (6,))),
                 "g: %1 (loop) carries (f32[2, 3]) but its body returns (f32[6])",
                 id="carry-type-changes"),
    pytest.param(_loop(_loop_body((2, 3), (2, 3), step=False)),
                 "g: %1 (loop) passes (i32[], f32[2, 3]) but its body takes (f32[2, 3])",
                 id="no-step-input"),
    pytest.param(_loop(_loop_body((3, 2), (3, 2))),
                 "g: %1 (loop) carries (f32[2, 3]) but its body returns (f32[3, 2])",
                 id="carry-init-type"),
    pytest.param(_loop(_loop_body((2, 3), (2, 3)), n_carry=2),
                 "g: %1 (loop) has n_carry=2, n_xs=0 but 1 srcs and its body returns 1",
                 id="n-carry"),
    pytest.param(_loop(_loop_body((2, 3), (2, 3)), n_carry=0, n_xs=1),
                 "g: %1 (loop): per-step input f32[2, 3] is not stacked along its length 5",
                 id="xs-not-stacked"),
])
def test_verifier_checks_loops(g: Graph, message: str) -> None:
    with pytest.raises(VerifyError) as info:
        verify(g)
    assert str(info.value) == message


def test_verifier_checks_call_arguments() -> None:
    body = Builder("f")
    v = inp(body, "v", (4,))
    callee = body.build((v,), (body.add(Op.EXP, (v,)),))
    b = Builder("g")
    x = inp(b, "x", (5,))
    call = b.add(Op.CALL, (x,), {"fn": "f", "prefix": "", "body": callee})
    g = b.build((x,), (b.add(Op.GET, (call,), {"index": 0}),))
    with pytest.raises(VerifyError, match=r"passes \(f32\[5\]\) but its body takes \(f32\[4\]\)"):
        verify(g)


# ---- passes on tiny graphs ---------------------------------------------------------

def test_inline_splices_the_body_and_prefixes_params() -> None:
    body = Builder("Dense.forward")
    v = inp(body, "v", ("B", 4))
    w = body.add(Op.PARAM, (), {"name": "w", "shape": (4, 2), "dtype": F32,
                                "init": ("zeros",)})
    callee = body.build((v,), (body.add(Op.MATMUL, (v, w)),))
    b = Builder("g")
    x = inp(b, "x", ("B", 4))
    call = b.add(Op.CALL, (x,), {"fn": "Dense.forward", "prefix": "fc", "body": callee})
    g = graph(b, (x,), b.add(Op.GET, (call,), {"index": 0}))
    assert print_graph(verify(inline(g))) == ir("""
        graph g(x) {
          %0:f32[B, 4] = input name=x
          %1:f32[4, 2] = param name=fc.w init=(zeros,)
          %2:f32[B, 2] = matmul %0 %1
          return %2
        }""")


def test_infer_shapes_rederives_stale_types() -> None:
    b = Builder("g")
    x = inp(b, "x", ("B", 4))
    y = b.add(Op.EXP, (x,), type=TensorType((4,), F32))  # a pass built it with a stale type
    g = b.build((x,), (b.add(Op.RELU, (y,), type=TensorType((4,), F32)),))
    with pytest.raises(VerifyError):
        verify(g)
    assert print_graph(verify(infer_shapes(g))) == ir("""
        graph g(x) {
          %0:f32[B, 4] = input name=x
          %1:f32[B, 4] = exp %0
          %2:f32[B, 4] = relu %1
          return %2
        }""")


def test_bind_dims_substitutes_symbols() -> None:
    b = Builder("g")
    x = inp(b, "x", ("B", "T"))
    g = graph(b, (x,), b.add(Op.RESHAPE, (x,), {"shape": ("B*T",)}))
    assert print_graph(verify(bind_dims(g, {"T": 3}))) == ir("""
        graph g(x) {
          %0:f32[B, 3] = input name=x
          %1:f32[3*B] = reshape %0
          return %1
        }""")


def test_fold_constants() -> None:
    b = Builder("g")
    x = inp(b, "x", (4,))
    six = b.add(Op.MUL, (const(b, 2.0), const(b, 3.0)))
    less = b.add(Op.LT, (const(b, 2, I32), const(b, 3, I32)))
    g = graph(b, (x,), b.add(Op.MUL, (x, six)), less)
    assert print_graph(verify(dce(fold_constants(g)))) == ir("""
        graph g(x) {
          %0:f32[4] = input name=x
          %1:f32[] = const value=6.0
          %2:bool[] = const value=True
          %3:f32[4] = mul %0 %1
          return %3, %2
        }""")


def _unary_chain(build: Any, shape: tuple[Any, ...] = ("B", 4)) -> Graph:
    b = Builder("g")
    x = inp(b, "x", shape)
    return graph(b, (x,), build(b, x))


X_ONLY = ir("""
    graph g(x) {
      %0:f32[B, 4] = input name=x
      return %0
    }""")


@pytest.mark.parametrize("build", [
    pytest.param(lambda b, x: b.add(Op.MUL, (x, const(b, 1.0))), id="x*1"),
    pytest.param(lambda b, x: b.add(Op.MUL, (const(b, 1.0), x)), id="1*x"),
    pytest.param(lambda b, x: b.add(Op.ADD, (x, const(b, 0.0))), id="x+0"),
    pytest.param(lambda b, x: b.add(Op.SUB, (x, const(b, 0.0))), id="x-0"),
    pytest.param(lambda b, x: b.add(Op.DIV, (x, const(b, 1.0))), id="x/1"),
    pytest.param(lambda b, x: b.add(Op.NEG, (b.add(Op.NEG, (x,)),)), id="neg-neg"),
    pytest.param(lambda b, x: b.add(Op.PERMUTE, (b.add(Op.PERMUTE, (x,), {"perm": (1, 0)}),),
                                    {"perm": (1, 0)}), id="permute-inverse"),
    pytest.param(lambda b, x: b.add(Op.RESHAPE, (b.add(Op.RESHAPE, (x,), {"shape": ("4*B",)}),),
                                    {"shape": ("B", 4)}), id="reshape-roundtrip"),
    pytest.param(lambda b, x: b.add(Op.EXPAND, (x,), {"shape": ("B", 4)}), id="expand-noop"),
])
def test_simplify_removes_identities(build: Any) -> None:
    g = _unary_chain(build)
    out = verify(dce(simplify(g)))
    assert print_graph(out) == X_ONLY


def test_simplify_keeps_what_is_not_an_identity() -> None:
    g = _unary_chain(lambda b, x: b.add(Op.SUB, (const(b, 0.0), x)))  # 0 - x is not x
    assert print_graph(simplify(g)) == print_graph(g)


def test_simplify_composes_permute_chains() -> None:
    g = _unary_chain(lambda b, x: b.add(Op.PERMUTE, (b.add(Op.PERMUTE, (x,), {"perm": (1, 2, 0)}),),
                                        {"perm": (1, 0, 2)}), shape=(2, 3, 4))
    assert print_graph(verify(dce(simplify(g)))) == ir("""
        graph g(x) {
          %0:f32[2, 3, 4] = input name=x
          %1:f32[4, 3, 2] = permute %0 perm=(2, 1, 0)
          return %1
        }""")


def test_simplify_collapses_reshape_chains() -> None:
    g = _unary_chain(lambda b, x: b.add(Op.RESHAPE, (b.add(Op.RESHAPE, (x,), {"shape": (24,)}),),
                                        {"shape": (6, 4)}), shape=(2, 3, 4))
    assert print_graph(verify(dce(simplify(g)))) == ir("""
        graph g(x) {
          %0:f32[2, 3, 4] = input name=x
          %1:f32[6, 4] = reshape %0
          return %1
        }""")


def test_cse_merges_equal_nodes_but_not_random_streams() -> None:
    b = Builder("g")
    x = inp(b, "x", (4,))
    w = {"name": "w", "shape": (4,), "dtype": F32, "init": ("ones",)}
    e1, e2 = b.add(Op.EXP, (x,)), b.add(Op.EXP, (x,))
    w1, w2 = b.add(Op.PARAM, (), w), b.add(Op.PARAM, (), w)  # two reads of one parameter
    r1 = b.add(Op.RAND, (), {"shape": (4,), "stream": "rand1"})
    r2 = b.add(Op.RAND, (), {"shape": (4,), "stream": "rand2"})
    g = graph(b, (x,), b.add(Op.ADD, (e1, e2)), b.add(Op.MUL, (w1, w2)),
              b.add(Op.ADD, (r1, r2)))
    assert print_graph(verify(cse(g))) == ir("""
        graph g(x) {
          %0:f32[4] = input name=x
          %1:f32[4] = exp %0
          %2:f32[4] = param name=w init=(ones,)
          %3:f32[4] = rand stream=rand1
          %4:f32[4] = rand stream=rand2
          %5:f32[4] = add %1 %1
          %6:f32[4] = mul %2 %2
          %7:f32[4] = add %3 %4
          return %5, %6, %7
        }""")


def test_dce_drops_dead_nodes_but_keeps_inputs() -> None:
    b = Builder("g")
    x, unused = inp(b, "x", (4,)), inp(b, "unused", (4,))
    b.add(Op.EXP, (x,))  # dead
    g = graph(b, (x, unused), b.add(Op.RELU, (x,)))
    assert print_graph(verify(dce(g))) == ir("""
        graph g(x, unused) {
          %0:f32[4] = input name=x
          %1:f32[4] = input name=unused
          %2:f32[4] = relu %0
          return %2
        }""")


def test_passes_reach_into_loop_bodies() -> None:
    body = Builder("loop_body")
    t, h = inp(body, "t", (), I32), inp(body, "h", (4,))
    y = body.add(Op.MUL, (body.add(Op.NEG, (body.add(Op.NEG, (h,)),)), const(body, 1.0)))
    b = Builder("g")
    x = inp(b, "x", (4,))
    loop = b.add(Op.LOOP, (x,), {"length": 3, "n_carry": 1,
                                 "body": body.build((t, h), (y,), ("h",))})
    g = graph(b, (x,), b.add(Op.GET, (loop,), {"index": 0}))
    assert print_graph(optimize(g, check=True)) == ir("""
        graph g(x) {
          %0:f32[4] = input name=x
          %1:(f32[4]) = loop %0 length=3 n_carry=1
            graph loop_body(t, h) {
              %0:i32[] = input name=t
              %1:f32[4] = input name=h
              return %1
            }
          %2:f32[4] = get %1 index=0
          return %2
        }""")


# ---- the whole pipeline on every model ---------------------------------------------

@pytest.mark.parametrize("model", MODEL_NAMES)
def test_optimize_verifies_after_every_pass(model: str) -> None:
    program = api.parse_file(MODELS / f"{model}.ember")
    for entry in ("forward", "loss"):
        for options in (Options(), Options(train=True, float64=True)):
            g = verify(lower(program, entry, options))
            for _, run in PIPELINE:
                g = verify(run(g))
            assert not any(n.op is Op.CALL for n in g.nodes)
            assert optimize(verify(lower(program, entry, options)), check=True) == g


def test_simplify_picks_the_branch_of_a_constant_where():
    from util import compile_src

    from ember.passes.simplify import simplify
    src = "model M {\n  def forward(x: f32[3], y: f32[3]) { return where(%s, x, y) * 2.0 }\n}\n"
    for cond, picked in (("1 > 0", "x"), ("1 < 0", "y")):
        g = simplify(compile_src(src % cond, stage="fold_constants"))
        assert not any(n.op is Op.WHERE for n in g.nodes), cond
        (mul,) = [n for n in g.nodes if n.op is Op.MUL]
        assert g.nodes[mul.srcs[0]].attrs.get("name") == picked
