"""Every builtin through the generated Triton kernels against the NumPy oracle.

Each case is one expression (or a whole program) over seeded random inputs, run
twice on the same graph: once on the oracle (`ember.api.run`, which defines the
meaning) and once as generated Triton kernels (`TritonProgram`, fused), which on
this machine run in Triton's interpreter on CPU tensors. Every kernel buffer
comes from a `GuardedPool`, so an unmasked store past a buffer's end is caught
(`pool.check() == []`), and every output must match the oracle's shape and
dtype, exactly for ints and bools and within `ember.backends.tolerance` for
floats (float32: 1e-4; the float64 subset: 1e-10).

Sizes are chosen to land on mask edges: 1, 7, 33 and 129 along the main axis
(tiles are powers of two, so 7, 33 and 129 leave partial tiles; 9 x 129 = 1161
elements spills a pointwise kernel into a second, partial, program), odd K
(7, 33) and N = 129 for matmul, and 3 or 5 channels for conv2d. Shapes stay
small (the interpreter pays per program instance): the file runs in ~15 s on
2 cores.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
from util import LSTM_STEPS, compile_src  # tests/util.py

pytest.importorskip("torch")
pytest.importorskip("triton")

from ember import api  # noqa: E402 - after the importorskips on purpose
from ember.backends import tolerance  # noqa: E402
from ember.ir.ops import Op  # noqa: E402
from ember.lang.builtins import BUILTINS  # noqa: E402
from ember.runtime.pool import GuardedPool  # noqa: E402
from ember.runtime.rand import dropout_keep, stream_seed  # noqa: E402
from ember.runtime.triton_backend import TritonProgram  # noqa: E402

SIZES = (1, 7, 33, 129)

# ---- inputs -------------------------------------------------------------------------------

Spec = Callable[[np.random.Generator], np.ndarray]


def normal(*shape: int, scale: float = 1.0) -> Spec:
    return lambda rng: rng.standard_normal(shape) * scale


def positive(*shape: int) -> Spec:
    """In [0.1, ~4): away from 0 for log, sqrt, rsqrt, pow's base and variances."""
    return lambda rng: np.abs(rng.standard_normal(shape)) + 0.1


def negative(*shape: int) -> Spec:
    return lambda rng: -(np.abs(rng.standard_normal(shape)) + 0.1)


def rounded(*shape: int) -> Spec:
    """Small integers as floats: comparisons and argmax see many ties."""
    return lambda rng: np.round(rng.standard_normal(shape) * 1.5)


def ints(high: int, *shape: int) -> Spec:
    return lambda rng: np.asarray(rng.integers(0, high, size=shape), dtype=np.int32)


def big_ints(*shape: int) -> Spec:
    """Odd i32 values above 2**24, where float32 cannot hold every integer."""
    return lambda rng: np.asarray(rng.integers(2**23, 2**24, size=shape) * 2 + 1, dtype=np.int32)


def bools(*shape: int) -> Spec:
    return lambda rng: rng.standard_normal(shape) > 0


def values(*vs: float) -> Spec:
    return lambda rng: np.array(vs, dtype=np.float64)


def nonfinite(rng: np.random.Generator) -> np.ndarray:
    """[3, 7] with nan, inf and -inf in different rows and columns."""
    row = np.array([np.nan, 1.0, -2.0, 3.0, np.inf, -np.inf, 0.0])
    return np.stack([row, row[::-1], [1.0, 2.0, -np.inf, np.inf, 5.0, 6.0, 7.0]])


def nan_image(rng: np.random.Generator) -> np.ndarray:
    return np.where(rng.random((1, 2, 4, 4)) > 0.7, np.nan, rng.standard_normal((1, 2, 4, 4)))


LARGE = values(-200.0, -100.0, -50.0, -20.0, -1.0, 0.0, 1.0, 20.0, 50.0, 100.0, 200.0)

_ANNOTATION = {"f": "f32", "i": "i32", "b": "bool"}


def program(expr: str, inputs: dict[str, np.ndarray]) -> str:
    """`expr` as the body of a one-function model taking `inputs` (or `expr` itself
    when it already is a program)."""
    if re.match(r"\s*model\s", expr):
        return expr
    args = ", ".join(f"{k}: {_ANNOTATION[a.dtype.kind]}[{', '.join(map(str, a.shape))}]"
                     for k, a in inputs.items())
    return f"model M {{\n  def forward({args}) {{ return {expr} }}\n}}"


# ---- cases ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    expr: str
    inputs: dict[str, Spec]
    id: str
    f64: bool = False          # also run in float64 (tolerance 1e-10)
    train: bool = False

    def param(self) -> Any:
        return pytest.param(self, id=self.id)


def case(expr: str, *, id: str = "", f64: bool = False, train: bool = False,
         **inputs: Spec) -> Case:
    if not id:
        shapes = ", ".join(f"{k}{list(s(np.random.default_rng(0)).shape)}"
                           for k, s in inputs.items())
        id = f"{expr} [{shapes}]" if shapes else expr
    return Case(expr, inputs, id, f64=f64, train=train)


def draw(c: Case, float64: bool) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(zlib.crc32(c.id.encode()))
    fdt = np.float64 if float64 else np.float32
    arrays = {k: spec(rng) for k, spec in c.inputs.items()}
    return {k: a.astype(fdt) if a.dtype.kind == "f" else a for k, a in arrays.items()}


def assert_matches(got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> None:
    """Same outputs, shapes and dtypes; floats within the backend tolerance."""
    assert list(got) == list(want)
    for name, w in want.items():
        g = got[name]
        assert (g.shape, g.dtype) == (w.shape, w.dtype), f"{name}: {g.dtype}{list(g.shape)}"
        if w.dtype.kind == "f":
            atol, rtol = tolerance(w.dtype, "ieee")
            np.testing.assert_allclose(g, w, rtol=rtol, atol=atol, err_msg=name)
        else:
            np.testing.assert_array_equal(g, w, err_msg=name)


def run_both(src: str, inputs: dict[str, np.ndarray], float64: bool = False,
             train: bool = False, seed: int = 0) -> tuple[dict[str, np.ndarray],
                                                          dict[str, np.ndarray]]:
    """(triton outputs, oracle outputs); the kernels' canaries must survive."""
    g = compile_src(src, float64=float64, train=train)
    want = api.run(g, inputs, {}, seed)
    pool = GuardedPool()
    got = TritonProgram(g, fused=True, precision="ieee")(inputs, {}, seed, pool=pool)
    assert pool.check() == []
    return got, want


def check(c: Case, float64: bool = False) -> None:
    arrays = draw(c, float64)
    got, want = run_both(program(c.expr, arrays), arrays, float64, c.train)
    assert_matches(got, want)


# ---- elementwise ----------------------------------------------------------------------------

UNARY = ["exp", "log", "sqrt", "rsqrt", "abs", "neg", "relu", "sigmoid", "tanh", "erf", "gelu"]
POSITIVE_ONLY = {"log", "sqrt", "rsqrt"}
CHAIN = "exp(x) + log(p) * sqrt(p) - rsqrt(p) + tanh(x) * sigmoid(x) - gelu(x) + erf(x)"

UNARY_CASES = [
    *[case(f"{op}(x)", x=(positive if op in POSITIVE_ONLY else normal)(3, 33),
           f64=op in ("tanh", "erf", "gelu")) for op in UNARY],
    *[case(f"{op}(x)", x=LARGE, id=f"{op}(large)") for op in ("sigmoid", "tanh", "erf", "gelu")],
    *[case(CHAIN, x=normal(n), p=positive(n), id=f"unary chain [{n}]", f64=n == 129)
      for n in SIZES],
    case(CHAIN, x=normal(9, 129), p=positive(9, 129), id="unary chain [9, 129]"),
    case("relu(x)", x=normal()),
    case("neg(x)", x=normal(1, 1)),
]

BINARY = [("add", "+"), ("sub", "-"), ("mul", "*"), ("div", "/"), ("pow", "**"),
          ("maximum", ""), ("minimum", "")]
BROADCASTS = [((7, 33), (33,)), ((3, 1, 7), (5, 1)), ((), (129,)), ((1,), (1, 7)),
              ((9, 129), (9, 1))]

BINARY_CASES = [
    case(f"{name}(a, b)" if not sym or (sa, sb) != BROADCASTS[0] else f"a {sym} b",
         a=(positive if name == "pow" else normal)(*sa), b=normal(*sb),
         f64=name in ("div", "pow") and sa == (7, 33))
    for name, sym in BINARY for sa, sb in BROADCASTS
]

SCALAR_CASES = [
    case("a + 2.5", a=normal(7, 33)),
    case("2.5 - a", a=normal(33)),
    case("a * 3", a=normal(129)),
    case("a / 3", a=normal(3, 7), f64=True),
    case("1 / a", a=positive(33)),
    case("-a", a=normal(2, 1, 7)),
    case("2.0 ** a", a=normal(3, 33)),
    case("maximum(a, 0.5)", a=normal(7)),
    case("minimum(a, 0)", a=normal(33)),
    case("a ** 2", a=normal(3, 33)),
    case("a ** -0.5", a=positive(7)),
]

COMPARE = ["<", "<=", ">", ">=", "==", "!="]
COMPARE_CASES = [
    *[case(f"a {op} b", a=rounded(3, 1, 33), b=rounded(5, 1)) for op in COMPARE],
    *[case(f"i {op} j", i=ints(3, 7, 33), j=ints(3, 33)) for op in COMPARE],
    case("a >= 0.0", a=rounded(129)),
]

LOGICAL_CASES = [
    case("logical_and(p, q)", p=bools(3, 1, 33), q=bools(5, 1)),
    case("logical_or(p, q)", p=bools(3, 1, 33), q=bools(5, 1)),
    case("logical_not(p)", p=bools(129)),
    case("logical_or(logical_not(a > 0), a > 1)", a=normal(7, 33)),
    case("where(a > 0, a, b)", a=normal(7, 33), b=normal(7, 33), f64=True),
    case("where(c, a, b)", c=bools(3, 1), a=normal(1, 33), b=normal(2, 1, 1)),
    case("where(c, a, 0.0)", c=bools(129), a=normal(2, 129)),
    case("where(c, -1e9, a)", c=bools(7, 7), a=normal(7, 7)),
]

INT_CASES = [
    case("i * 2 - j", i=ints(9, 7, 33), j=ints(9, 33)),
    case("abs(-i + j)", i=ints(9, 7, 1), j=ints(9, 129)),
    case("maximum(i, j) + minimum(i, j)", i=ints(9, 3, 33), j=ints(9, 3, 1)),
    case("to_float(i) * x", i=ints(9, 7, 33), x=normal(33)),
    case("to_float(a > 0)", a=normal(7, 33)),
    case("sum(i, axis=0)", i=ints(9, 33, 7)),
    case("max(i, axis=-1)", i=ints(9, 7, 33)),
    case("min(i)", i=ints(9, 7, 33)),
    case("big_i + 1", big_i=big_ints(7, 33)),
    case("sum(big_i, axis=0)", big_i=big_ints(3, 7)),
    case("max(big_i, axis=-1)", big_i=big_ints(7, 33)),
    case("min(big_i)", big_i=big_ints(7, 33)),
]

# ---- reductions ---------------------------------------------------------------------------

REDUCE_LAYOUTS = [  # (input shape, axis kwargs)
    ((5, 129), ""),
    ((5, 129), ", axis=-1"),
    ((3, 33, 7), ", axis=1"),
    ((3, 33, 7), ", axis=(0, 2)"),
    ((33, 7), ", axis=-1, keepdims=true"),
    ((3, 33, 7), ", axis=1, keepdims=true"),
    ((1, 7), ", axis=0"),
    ((129, 33), ", axis=-1"),  # 129 rows: several programs, the last one partial
]

REDUCE_CASES = [
    *[case(f"{op}(x{kw})", x=normal(*shape), f64=op in ("sum", "mean") and shape == (3, 33, 7))
      for op in ("sum", "mean", "max", "min") for shape, kw in REDUCE_LAYOUTS],
    case("argmax(x)", x=rounded(7, 33)),
    case("argmax(x, axis=0)", x=rounded(33, 7)),
    case("argmax(x, axis=1, keepdims=true)", x=normal(3, 129, 5)),
    case("argmax(x)", x=normal(1)),
    case("sum(x * 2.0, axis=(0, 2)) + y", x=normal(3, 7, 33), y=normal(7)),
    case("x - mean(x, axis=-1, keepdims=true)", x=normal(33, 129)),
    case("x * sum(x, axis=0)", x=normal(33, 7)),
    case("max(x, axis=1) - min(x, axis=1)", x=normal(7, 33)),
    case("sum(x, axis=-1), x - 1.0", x=normal(7, 33)),
    case("x - sum(x, axis=1)", x=normal(7, 7)),
    case("x + max(x, axis=(1, 2))", x=normal(3, 3, 3)),
]

# ---- networks -----------------------------------------------------------------------------

SOFTMAX_CASES = [
    *[case(f"{fn}(x)", x=normal(3, n), f64=n == 33) for fn in ("softmax", "log_softmax")
      for n in SIZES],
    *[case(f"{fn}(x{kw})", x=normal(3, 33, 5)) for fn in ("softmax", "log_softmax")
      for kw in (", axis=0", ", axis=1", ", axis=(1, 2)")],
    case("softmax(x)", x=normal(3, 129, scale=60), id="softmax(large)"),
    case("log_softmax(x)", x=normal(33, 7, scale=60), id="log_softmax(large)"),
    case("softmax(where(causal_mask(7), x, -1e9))", x=normal(2, 7, 7)),
    case("softmax(x)", x=normal(1, 1)),
    case("log_softmax(x)", x=normal(1)),
]

NORM_CASES = [
    case("layer_norm(x, w, b)", x=normal(2, 7, 33), w=normal(33), b=normal(33), f64=True),
    case("layer_norm(x, w, b)", x=normal(33, 129), w=normal(129), b=normal(129)),
    case("layer_norm(x, w, b, eps=1e-3)", x=normal(1, 1, 7, scale=3), w=normal(7), b=normal(7)),
    case("layer_norm(x, w, b)", x=normal(4, 1), w=normal(1), b=normal(1)),
    case("layer_norm(x, 2.0, 0.5)", x=normal(3, 6)),
    *[case("batch_norm(x, w, b, m, v)", x=normal(*xs), w=normal(c), b=normal(c), m=normal(c),
           v=positive(c), train=train, f64=True, id=f"batch_norm {mode} x{list(xs)}")
      for mode, train in (("eval", False), ("train", True))
      for xs, c in (((4, 3, 5, 2), 3), ((129, 5), 5), ((1, 3, 7, 7), 3))],
]

MATMUL_CASES = [
    case("a @ b", a=normal(33, 7), b=normal(7, 129), f64=True),
    case("a @ b", a=normal(3, 33), b=normal(33, 5), f64=True),
    case("a @ b", a=normal(65, 33), b=normal(33, 66)),
    case("matmul(a, b)", a=normal(2, 7, 33), b=normal(2, 33, 5)),
    case("a @ b", a=normal(2, 1, 3, 7), b=normal(5, 7, 4), f64=True),
    case("a @ b", a=normal(3, 7), b=normal(2, 7, 5)),
    case("a @ b", a=normal(2, 3, 7), b=normal(7, 5)),
    case("a @ transpose(b)", a=normal(3, 33), b=normal(5, 33)),
    case("transpose(a) @ b", a=normal(7, 3), b=normal(7, 5)),
    case("transpose(a, 1, 2) @ b", a=normal(2, 7, 3), b=normal(2, 7, 5)),
    case("relu(a @ b + c)", a=normal(3, 33), b=normal(33, 129), c=normal(129)),
    case("exp(a) @ b", a=normal(3, 7), b=normal(7, 5)),
    case("(a @ b) @ c", a=normal(3, 7), b=normal(7, 5), c=normal(5, 3)),
    case("a @ b + transpose(a @ b)", a=normal(5, 7), b=normal(7, 5)),
    case("a @ b", a=normal(1, 7), b=normal(7, 129)),
    case("a @ b", a=normal(3, 7), b=normal(7, 1)),
    case("a @ b", a=normal(2, 1, 7), b=normal(2, 7, 5)),
    case("a @ b", a=normal(3, 1), b=normal(1, 5)),
]

CONV_CASES = [
    case(f"conv2d(x, w{kw})", x=normal(*xs), w=normal(*ws), f64=f64)
    for xs, ws, kw, f64 in [
        ((2, 3, 7, 7), (5, 3, 3, 3), "", True),
        ((2, 3, 7, 7), (5, 3, 3, 3), ", stride=2, padding=1", False),
        ((1, 3, 8, 5), (5, 3, 3, 2), ", stride=(2, 1), padding=(1, 2)", False),
        ((1, 5, 9, 7), (3, 5, 3, 3), ", padding=2, dilation=2", True),
        ((1, 3, 9, 8), (2, 3, 2, 3), ", dilation=(2, 1), stride=(1, 2)", False),
        ((2, 3, 6, 5), (6, 1, 3, 3), ", padding=1, groups=3", True),
        ((1, 4, 5, 5), (6, 2, 3, 1), ", groups=2", False),
        ((1, 5, 5, 5), (5, 1, 3, 1), ", groups=5", False),
        ((2, 3, 4, 5), (5, 3, 1, 1), "", False),
        ((1, 1, 5, 5), (3, 1, 1, 1), "", False),
        ((1, 3, 33, 5), (5, 3, 3, 3), ", padding=1", False),
    ]
] + [
    case("relu(conv2d(x, w, padding=1) + b[:, None, None])", x=normal(2, 3, 7, 7),
         w=normal(5, 3, 3, 3), b=normal(5)),
    case("relu(batch_norm(conv2d(x, k, padding=1), w, b, m, v))", x=normal(2, 3, 7, 7),
         k=normal(5, 3, 3, 3), w=normal(5), b=normal(5), m=normal(5), v=positive(5)),
    case("conv2d(x, w)", x=normal(1, 3, 7, 7), w=normal(1, 3, 3, 3)),
    case("conv2d(x, w)", x=normal(1, 3, 3, 3), w=normal(5, 3, 3, 3)),
]

POOL_CONFIGS = [
    ((2, 3, 6, 6), "2"),
    ((2, 3, 7, 5), "3, stride=2, padding=1"),
    ((1, 2, 7, 6), "(3, 2), stride=(1, 2), padding=(1, 0)"),
    ((1, 5, 5, 9), "2, stride=3"),
    ((2, 1, 4, 4), "4, padding=2"),
    ((1, 3, 33, 7), "3, stride=1, padding=1"),
]
POOL_CASES = [
    *[case(f"{op}(x, {args})", x=spec(*xs), f64=op == "avg_pool2d" and xs == (2, 3, 7, 5),
           id=f"{op}(x{list(xs)}, {args}){tag}")
      for op in ("max_pool2d", "avg_pool2d") for xs, args in POOL_CONFIGS
      # all-negative inputs: padding must count as -inf for max, as 0 for avg
      for spec, tag in ((normal, ""), (negative, " negative"))],
    case("relu(max_pool2d(x, 2)) + 1.0", x=normal(3, 5, 8, 8)),
    case("max_pool2d(x, 1)", x=normal(1, 1, 1, 1)),
    case("avg_pool2d(x, 1)", x=normal(1, 1, 1, 1)),
]

LOSS_CASES = [
    case("cross_entropy(z, y)", z=normal(5, 7), y=ints(7, 5), f64=True),
    case("cross_entropy(z, y)", z=normal(33, 129), y=ints(129, 33)),
    case("cross_entropy(z, y)", z=normal(2, 3, 7), y=ints(7, 2, 3)),
    case("cross_entropy(z, y)", z=normal(4, 9, scale=60), y=ints(9, 4), id="cross_entropy(large)"),
    case("cross_entropy(z, y)", z=normal(1, 1), y=ints(1, 1)),
    case("mse(a, b)", a=normal(3, 129), b=normal(3, 129), f64=True),
    case("mse(a, b)", a=normal(33), b=normal(33)),
    case("mse(a, b)", a=normal(4, 1), b=normal(4, 1)),
    case("dropout(x, p=0.3)", x=normal(7, 33), id="dropout eval"),
    case("cross_entropy(z, y)", z=normal(6), y=ints(6)),
    case("mse(a, b)", a=normal(), b=normal()),
]

# ---- movement, indexing, creation ---------------------------------------------------------

MOVEMENT_CASES = [
    case("reshape(x, 7, 33)", x=normal(33, 7)),
    case("reshape(x, -1) * 2.0", x=normal(3, 7, 5)),
    case("relu(reshape(x, 3, -1))", x=normal(3, 7, 5)),
    case("reshape(x, 1)", x=normal()),
    case("permute(x, 2, 0, 1)", x=normal(3, 7, 5)),
    case("permute(x, 2, 0, 1) + 1.0", x=normal(3, 7, 5), f64=True),
    case("transpose(x)", x=normal(33, 129)),
    case("transpose(x, 0, 2) * y", x=normal(5, 3, 7), y=normal(7, 1, 1)),
    case("broadcast(x, 4, 3, 5)", x=normal(3, 1)),
    case("flatten(x)", x=normal(2, 3, 5)),
    case("squeeze(x, 1)", x=normal(3, 1, 5)),
    case("unsqueeze(x, 1) + y", x=normal(3, 5), y=normal(4, 5)),
    case("x[1:7:2, ::3] * 2.0", x=normal(9, 33)),
    case("x[:, -2, 1:5:2]", x=normal(4, 5, 6)),
    case("x[..., ::3]", x=normal(4, 5, 129)),
    case("x[None, ..., None]", x=normal(4, 5)),
    case("x[0, 0, 0]", x=normal(4, 5, 6)),
    case("x[:, 4:1]", x=normal(4, 5, 6)),
    case("concat(a, b)", a=normal(2, 33), b=normal(5, 33)),
    case("concat(a, b, c, axis=-1)", a=normal(3, 1), b=normal(3, 7), c=normal(3, 33)),
    case("relu(concat(a, b, axis=1))", a=normal(2, 3, 4), b=normal(2, 1, 4)),
    case("concat(a)", a=normal(7)),
    case("split(x, 3, axis=1)", x=normal(2, 9, 5)),
    case("split(x, 5)", x=normal(2, 3, 5)),
    case("slice(x, 1, 129, step=3, axis=0)", x=normal(129, 7)),
    case("split(relu(x), 3, axis=0)", x=normal(129, 2)),
    case("x[ids]", x=normal(7, 33), ids=ints(7, 5)),
    case("x[ids]", x=normal(7, 2, 3), ids=ints(7, 2, 4)),
    case("x[ids][:, 1]", x=normal(5, 3), ids=ints(5, 6)),
    case("embedding(t, ids) * 2.0", t=normal(129, 5), ids=ints(129, 3, 7)),
]

CREATION_CASES = [
    case("zeros(2, 3)"),
    case("ones(1, 4) + x", x=normal(4)),
    case("full(2.5, 3, 1, 2)"),
    case("zeros()"),
    case("arange(7)"),
    case("arange(1)"),
    case("to_float(arange(33)) * x", x=normal(33)),
    case("causal_mask(7)"),
    case("causal_mask(1)"),
    case("one_hot(y, 5)", y=ints(5, 7)),
    case("one_hot(y, 129)", y=ints(129, 2, 3)),
    case("one_hot(y, 1)", y=ints(1, 3)),
    case("""
model M {
  def forward(x: f32[B, T, 3]) {
    return ones(B, T) + sum(x, axis=-1) + to_float(arange(T)), causal_mask(T), zeros(T, B)
  }
}""", x=normal(2, 7, 3), id="creation with symbolic dims"),
]

# ---- loops ---------------------------------------------------------------------------------

LOOP_CASES = [
    case("""
model M {
  def forward(x: f32[4, T, 3]) {
    let acc = zeros(4, 3)
    for t in range(T) { acc = acc + x[:, t, :] * to_float(t) }
    return acc
  }
}""", x=normal(4, 7, 3), id="loop x[:, t, :]", f64=True),
    case("""
model M {
  def forward(x: f32[4, 7, 3]) {
    let acc = zeros(4, 3)
    for t in range(7) { acc = acc * 0.5 + x[:, 6 - t, :] }
    return acc
  }
}""", x=normal(4, 7, 3), id="loop x[:, 6 - t, :]"),
    case("""
model M {
  def forward(x: f32[B, T, 3], w: f32[3, 5]) {
    let h = zeros(B, 5)
    for t in range(T) { h = tanh(x[:, t, :] @ w + h) }
    return h, sum(h, axis=-1)
  }
}""", x=normal(33, 5, 3), w=normal(3, 5), id="loop rnn", f64=True),
    case("""
model M {
  def forward(x: f32[4, 7, 3]) {
    let acc = zeros(4, 3)
    let m = zeros(4)
    for t in range(7) {
      acc = acc + softmax(x[:, t, :])
      m = maximum(m, max(x[:, t, :], axis=-1))
    }
    return acc, m
  }
}""", x=normal(4, 7, 3), id="loop with reductions"),
    case("""
model M {
  def forward(x: f32[2, T]) {
    let acc = zeros(2)
    for t in range(T) { acc = acc + x[:, t] }
    return acc
  }
}""", x=normal(2, 1), id="loop T=1"),
]

# ---- nan and inf -------------------------------------------------------------------------

NONFINITE_CASES = [
    *[case(e, x=nonfinite, id=f"{e} nonfinite") for e in (
        "exp(x) + abs(x) * sigmoid(x) - tanh(x)", "sqrt(x) + log(x) * rsqrt(x)", "gelu(x)",
        "erf(x)", "x != x", "where(x > 0.0, x, 1.0)", "sum(x, axis=-1)", "mean(x, axis=0)",
        "softmax(x)", "log_softmax(x)", "layer_norm(x, 1.0, 0.0)", "x @ transpose(x)")],
    case("avg_pool2d(x, 2)", x=nan_image, id="avg_pool2d nan"),
    *[case(e, x=nonfinite, id=f"{e} nonfinite") for e in (
        "relu(x)", "maximum(x, 0.5)", "minimum(x, 0.5)", "max(x, axis=-1)", "min(x, axis=0)",
        "argmax(x)")],
    case("max_pool2d(x, 2)", x=nan_image, id="max_pool2d nan"),
]

# ---- fusion: prologues, epilogues, views of kernel results -------------------------------

FUSION_CASES = [
    case("conv2d(x + 1.0, w, padding=1)", x=normal(2, 3, 7, 7), w=normal(5, 3, 3, 3)),
    case("conv2d(exp(x), relu(w), padding=2)", x=normal(1, 3, 5, 5), w=normal(5, 3, 3, 3)),
    case("max_pool2d(exp(x), 3, stride=2, padding=1)", x=negative(2, 3, 7, 5)),
    case("max_pool2d(relu(conv2d(x, w, padding=1)), 2) + 1.0", x=normal(2, 3, 7, 7),
         w=normal(5, 3, 3, 3)),
    case("sum(conv2d(x, w, padding=1), axis=(0, 2, 3))", x=normal(2, 3, 7, 7),
         w=normal(5, 3, 3, 3)),
    case("concat(a @ b, relu(a @ b), axis=0)", a=normal(3, 7), b=normal(7, 5)),
    case("softmax(transpose(a @ b))", a=normal(3, 7), b=normal(7, 5)),
    case("(a @ b)[1:, ::2]", a=normal(3, 7), b=normal(7, 5)),
    case("one_hot(y, 7) @ w", y=ints(7, 5), w=normal(7, 3)),
    case("x[argmax(y)] @ w", x=normal(7, 3), y=normal(5, 7), w=normal(3, 33)),
    case("where(causal_mask(7), a @ b, 0.0)", a=normal(7, 3), b=normal(3, 7)),
    case("argmax(softmax(x)), to_float(argmax(x)) * max(x, axis=-1)", x=normal(3, 33)),
]

# ---- pattern kernels: flash attention and gated GEMMs -------------------------------------

ATTENTION = "softmax(where(causal_mask({t}), (q @ transpose(k)) * 0.5, -1e9)) @ v"


def lstm_cell(n_in: int, hidden: int) -> str:
    """An LSTM over T steps with fixed sizes (the gates pattern needs a static width)."""
    g = 4 * hidden
    return f"""
model M {{
  def forward(x: f32[B, T, {n_in}], w_ih: f32[{n_in}, {g}], w_hh: f32[{hidden}, {g}],
              b: f32[{g}], h0: f32[B, {hidden}]) {{
    let h = h0
    let c = h0 * 0.5
{LSTM_STEPS}    return h, c
  }}
}}"""


def lstm_case(batch: int, steps: int, n_in: int, hidden: int, **kw: Any) -> Case:
    g = 4 * hidden
    return case(lstm_cell(n_in, hidden), x=normal(batch, steps, n_in), w_ih=normal(n_in, g),
                w_hh=normal(hidden, g), b=normal(g), h0=normal(batch, hidden),
                id=f"lstm B={batch} T={steps} in={n_in} hidden={hidden}", **kw)


PATTERN_CASES = [
    *[case(ATTENTION.format(t=t), q=normal(2, 3, t, 5), k=normal(2, 3, t, 5),
           v=normal(2, 3, t, 5), f64=t == 33) for t in (7, 33, 129)],
    case("softmax(q @ transpose(k)) @ v", q=normal(2, 7, 5), k=normal(2, 9, 5), v=normal(2, 9, 5)),
    case("softmax(q @ transpose(k) * 60.0) @ v", q=normal(7, 33), k=normal(9, 33),
         v=normal(9, 33)),
    case("softmax(where(m, q @ transpose(k), -1e9)) @ v", m=bools(2, 1, 7, 9),
         q=normal(2, 3, 7, 5), k=normal(2, 3, 9, 5), v=normal(2, 3, 9, 5)),
    case("softmax(q @ transpose(k)) @ v", q=normal(2, 1, 7, 5), k=normal(3, 9, 5),
         v=normal(9, 5)),
    case("relu(softmax(exp(q) @ transpose(k)) @ transpose(v) + 1.0)", q=normal(7, 5),
         k=normal(9, 5), v=normal(5, 9)),
    case("softmax(where(causal_mask(33), q @ transpose(k), -1e9)) @ v", q=normal(2, 33, 8),
         k=normal(2, 33, 8), v=normal(2, 33, 8)),
    case(ATTENTION.format(t=1), q=normal(2, 3, 1, 5), k=normal(2, 3, 1, 5),
         v=normal(2, 3, 1, 5)),
    case("softmax(q @ transpose(k)) @ v", q=normal(7, 5), k=normal(9, 5), v=normal(9, 3)),
    case("softmax(q @ transpose(k)) @ v", q=normal(7, 3), k=normal(9, 3), v=normal(9, 5)),
    case("softmax(where(causal_mask(33), q @ transpose(k), 0.0)) @ v", q=normal(2, 33, 8),
         k=normal(2, 33, 8), v=normal(2, 33, 8)),
    lstm_case(3, 5, 7, 5, f64=True),
    lstm_case(33, 3, 33, 9),
    lstm_case(2, 1, 129, 33),
    lstm_case(1, 2, 3, 1),
    lstm_case(5, 4, 1, 3),
    case("split(x @ w + b, 3, axis=-1)", x=normal(5, 7), w=normal(7, 9), b=normal(9)),
]

CASES = [
    *UNARY_CASES, *BINARY_CASES, *SCALAR_CASES, *COMPARE_CASES, *LOGICAL_CASES, *INT_CASES,
    *REDUCE_CASES, *SOFTMAX_CASES, *NORM_CASES, *MATMUL_CASES, *CONV_CASES, *POOL_CASES,
    *LOSS_CASES, *MOVEMENT_CASES, *CREATION_CASES, *LOOP_CASES, *NONFINITE_CASES, *FUSION_CASES,
    *PATTERN_CASES,
]


@pytest.mark.parametrize("c", [c.param() for c in CASES])
def test_float32(c: Case) -> None:
    check(c)


@pytest.mark.parametrize("c", [c.param() for c in CASES if c.f64])
def test_float64(c: Case) -> None:
    check(c, float64=True)


def test_every_builtin_has_a_case() -> None:
    from test_lang_ops import CASES as LANG_CASES  # the composites of lang/*_builtins.py
    used = {m for c in [*CASES, *LANG_CASES] for m in re.findall(r"\b(\w+)\(", c.expr)}
    used |= {"dropout"}  # test_dropout_train below
    missing = sorted(set(BUILTINS) - used)
    assert not missing, f"builtins without a Triton case: {missing}"


def test_ids_are_unique() -> None:
    ids = [c.id for c in CASES]
    assert len(ids) == len(set(ids))


# ---- dropout in train mode: the kernels draw the oracle's masks exactly --------------------


@pytest.mark.parametrize("float64", [False, True], ids=["f32", "f64"])
@pytest.mark.parametrize("expr, ps", [
    ("dropout(x, p=0.1)", [0.1]),
    ("dropout(x, p=0.5), dropout(x, p=0.5)", [0.5, 0.5]),   # two sites: two streams
    ("dropout(exp(x @ w), p=0.3)", [0.3]),                 # in a matmul epilogue
    ("dropout(transpose(x), p=0.5)", [0.5]),               # indexed through a view
    ("sum(dropout(x, p=0.25), axis=-1)", None),            # inside a reduction kernel
])
def test_dropout_train(expr: str, ps: list[float] | None, float64: bool) -> None:
    rng = np.random.default_rng(zlib.crc32(expr.encode()))
    fdt = np.float64 if float64 else np.float32
    # positive values: an output element is 0 exactly when it was dropped
    inputs = {"x": (np.abs(rng.standard_normal((33, 129))) + 0.5).astype(fdt)}
    if "@" in expr:
        inputs["w"] = (rng.standard_normal((129, 7)) * 0.1).astype(fdt)
    seed = 7
    src = program(expr, inputs)
    got, want = run_both(src, inputs, float64=float64, train=True, seed=seed)
    assert_matches(got, want)
    if ps is None:
        return
    # The kept set is the documented rule's (runtime/rand.py), in the kernels as in the
    # oracle: element i of a site's output is kept iff uniform(stream seed, i) >= p.
    streams = [n.attrs["stream"] for n in compile_src(src, float64=float64, train=True).nodes
               if n.op is Op.RAND]
    for (name, out), stream, p in zip(got.items(), streams, ps, strict=True):
        keep = dropout_keep(stream_seed(seed, stream), out.shape, p)
        np.testing.assert_array_equal(out != 0, keep, err_msg=name)
        np.testing.assert_array_equal(want[name] != 0, keep, err_msg=name)
