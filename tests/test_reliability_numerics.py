"""Regression tests for numerics users would call bugs, and for size-1 dims in
every kernel template (issue 9).

The size-1 sweep runs each template (pointwise, reduce, matmul, conv, pool,
attention, gates) with size-1 spatial and channel dims through the generated
kernels in Triton's interpreter, against the oracle, with canary-guarded
buffers (the helpers of test_triton_ops.py). Float32 tolerances are the
backend's (`ember.backends.tolerance`: 1e-4 absolute and relative).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("triton")

from test_errors import ember  # noqa: E402 - the CLI in a subprocess
from test_triton_ops import (  # noqa: E402 - after the importorskip on purpose
    ATTENTION,
    Case,
    assert_matches,
    case,
    check,
    lstm_case,
    normal,
    program,
    run_both,
)
from util import MODELS, run_src  # noqa: E402 - tests/util.py

from ember.backends import compare  # noqa: E402

CONV_SIZE_1 = [
    case(f"conv2d(x, w{kw})", x=normal(*xs), w=normal(*ws))
    for xs, ws, kw in [
        ((2, 8, 1, 16), (12, 8, 1, 3), ", padding=(0, 1)"),  # a conv1d written as conv2d
        ((2, 3, 16, 1), (4, 3, 3, 1), ", padding=(1, 0)"),
        ((1, 8, 1, 7), (5, 8, 1, 3), ", stride=(3, 1), padding=(1, 1)"),  # a row of padding
        ((2, 1, 1, 1), (3, 1, 1, 1), ""),
        ((2, 3, 1, 1), (1, 3, 1, 1), ", padding=1"),
        ((1, 3, 1, 5), (3, 1, 1, 3), ", padding=(0, 1), groups=3"),
        ((1, 1, 1, 9), (1, 1, 1, 3), ", dilation=(1, 2), padding=(0, 2)"),
    ]
]

POOL_SIZE_1 = [
    case(f"{op}(x, {args})", x=normal(*xs))
    for op in ("max_pool2d", "avg_pool2d")
    for xs, args in [
        ((2, 3, 1, 16), "(1, 3), stride=1, padding=(0, 1)"),
        ((1, 1, 16, 1), "(3, 1), stride=(2, 1), padding=(1, 0)"),
        ((2, 1, 1, 1), "1"),
        ((1, 2, 1, 5), "(2, 2), stride=2, padding=1"),
    ]
]

OTHER_SIZE_1 = [
    case("relu(x) * 2.0 + x", x=normal(2, 1, 1, 5)),
    case("exp(x) + 1.0", x=normal(1, 1, 1, 1)),
    case("sum(x, axis=(2, 3))", x=normal(2, 3, 1, 1)),
    case("max(x, axis=1), mean(x, axis=-1)", x=normal(2, 1, 5)),
    case("softmax(x, axis=-1)", x=normal(3, 1)),
    case("layer_norm(x, w, b)", x=normal(2, 1, 1), w=normal(1), b=normal(1)),
    case("a @ b", a=normal(1, 1), b=normal(1, 1)),
    case("a @ b + c", a=normal(2, 1, 7), b=normal(7, 1), c=normal(1)),
    case(ATTENTION.format(t=7), q=normal(2, 1, 7, 1), k=normal(2, 1, 7, 1), v=normal(2, 1, 7, 1)),
    case("softmax(q @ transpose(k)) @ v", q=normal(1, 5), k=normal(1, 5), v=normal(1, 1)),
    lstm_case(2, 1, 1, 1),
    lstm_case(1, 3, 1, 2),
]


@pytest.mark.parametrize("c", [c.param() for c in CONV_SIZE_1 + POOL_SIZE_1 + OTHER_SIZE_1])
def test_size_1_dims_in_every_template(c: Case) -> None:
    check(c)



CONV1D = """model M {
  def forward(x: f32[B, 8, 1, 16], w: f32[12, 8, 1, 3]) -> f32[B, 12, 1, 16] {
    return conv2d(x, w, padding=(0, 1))
  }
}
"""


def test_conv1d_as_conv2d_through_the_cli(tmp_path: Path) -> None:
    (tmp_path / "m.ember").write_text(CONV1D)
    r = ember(tmp_path, "run", "m.ember", "--dims", "B=2", "--backend", "triton", "--check")
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[-1].endswith(" ok")


# ---- only Ember's own lines on the terminal --------------------------------------------


def test_masked_lane_warnings_stay_quiet(tmp_path: Path) -> None:
    """The interpreter computes log(0) on masked-off lanes of the loss kernel."""
    r = ember(tmp_path, "run", str(MODELS / "mlp.ember"), "--entry", "loss", "--dims", "B=3",
              "--backend", "triton", "--check")
    assert r.returncode == 0, r.stderr
    assert r.stderr == ""


def test_oracle_infinities_are_results_not_warnings(tmp_path: Path) -> None:
    (tmp_path / "m.ember").write_text(
        "model M {\n  def forward(x: f32[4]) -> f32[4] { return log(x) / x }\n}\n")
    np.save(tmp_path / "x.npy", np.array([0.0, 1.0, -1.0, 2.0], np.float32))
    for backend in ("numpy", "triton"):
        r = ember(tmp_path, "run", "m.ember", "--input", "x=x.npy", "--backend", backend,
                  "-o", "out.npz")
        assert r.returncode == 0 and r.stderr == "", r.stderr
        out = np.load(tmp_path / "out.npz")["forward"]
        assert out[0] == -np.inf and np.isnan(out[2]) and out[1] == 0.0


# ---- --check ---------------------------------------------------------------------------

INF, NAN = np.inf, np.nan


@pytest.mark.parametrize("got, want, ok, max_abs", [
    ([INF, -INF, 1.0], [INF, -INF, 1.0], True, 0.0),
    ([NAN, 2.0], [NAN, 2.0], True, 0.0),
    ([1e30], [INF], False, INF),        # rtol * inf would admit anything: never a match
    ([INF], [1e30], False, INF),
    ([INF], [-INF], False, INF),
    ([NAN], [1.0], False, NAN),
])
def test_check_matches_equal_infinities_only(got: list[float], want: list[float], ok: bool,
                                             max_abs: float) -> None:
    (c,) = compare({"o": np.array(got, np.float32)}, {"o": np.array(want, np.float32)}, "ieee")
    assert c.ok is ok
    np.testing.assert_equal(c.max_abs, max_abs)


def test_check_with_infinite_outputs_through_the_cli(tmp_path: Path) -> None:
    (tmp_path / "m.ember").write_text(
        "model M {\n  def forward(x: f32[3]) -> f32[3] { return exp(x) * x }\n}\n")
    np.save(tmp_path / "x.npy", np.array([1000.0, -1000.0, 1.0], np.float32))
    r = ember(tmp_path, "run", "m.ember", "--input", "x=x.npy", "--backend", "triton", "--check")
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
    assert r.stdout.splitlines()[-1].startswith("check forward: max abs err 0,")


# ---- cross_entropy and layer_norm at the edges of float32 -------------------------------

F32_RTOL = 1e-5  # a few float32 roundings through exp, log and the mean (eps = 1.2e-7)
CE = "cross_entropy(z, y)"
CE_LOGITS = {
    "masked": [[1.0, -INF, 2.0], [0.5, 0.1, -INF]],       # -inf masks a class
    "near-max": [[3e38, -3e38, 1.0], [3e38, 3e38, 3e38]],  # shifted logits overflow to -inf
    "all-large": [[3.4e38, 3.0e38, 0.0], [-3e38, -3.4e38, -3e38]],
}
LABELS = np.array([0, 1], np.int32)


def torch_ce(z: np.ndarray) -> float:
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    return float(F.cross_entropy(torch.tensor(z, dtype=torch.float64), torch.tensor(LABELS).long()))


@pytest.mark.parametrize("name", list(CE_LOGITS))
@pytest.mark.parametrize("float64", [False, True], ids=["f32", "f64"])
def test_cross_entropy_is_finite_where_torch_is(name: str, float64: bool) -> None:
    z = np.array(CE_LOGITS[name], np.float64 if float64 else np.float32)
    (loss,) = run_src(program(CE, {"z": z, "y": LABELS}), {"z": z, "y": LABELS}, float64=float64)
    want = torch_ce(z)
    assert np.isfinite(want)
    np.testing.assert_allclose(loss, want, rtol=1e-12 if float64 else F32_RTOL)


@pytest.mark.parametrize("name", list(CE_LOGITS))
def test_cross_entropy_edges_in_the_kernels(name: str) -> None:
    check(case(CE, z=lambda rng: np.array(CE_LOGITS[name]), y=lambda rng: LABELS,
               id=f"cross_entropy({name})"))


LN = "layer_norm(x, w, b)"
HUGE_ROWS = np.array([[1e30, 2e30, 3e30, 4e30], [3e38, -3e38, 1e38, 0.0],
                      [-1e35, 1e35, -1e35, 1e35], [1e-3, 2e-3, -1e-3, 0.0]], np.float32)


def ln_reference(x: np.ndarray, eps: float = 1e-5) -> np.ndarray:
    """layer_norm in float64, exact enough to judge float32 results."""
    x = x.astype(np.float64)
    d = x - x.mean(-1, keepdims=True)
    return d / np.sqrt((d * d).mean(-1, keepdims=True) + eps)


def ln_inputs(x: np.ndarray) -> dict[str, np.ndarray]:
    return {"x": x, "w": np.ones(4, x.dtype), "b": np.zeros(4, x.dtype)}


def test_layer_norm_of_huge_float32_rows_is_right_not_zero() -> None:
    (out,) = run_src(program(LN, ln_inputs(HUGE_ROWS)), ln_inputs(HUGE_ROWS), float64=False)
    np.testing.assert_allclose(out, ln_reference(HUGE_ROWS), rtol=F32_RTOL, atol=F32_RTOL)


def test_layer_norm_of_huge_rows_in_the_kernels() -> None:
    check(case(LN, x=lambda rng: HUGE_ROWS, w=lambda rng: np.ones(4),
               b=lambda rng: np.zeros(4), id="layer_norm(huge rows)"))


def test_layer_norm_of_rows_within_one_is_the_plain_formula_bit_for_bit() -> None:
    x = np.random.default_rng(5).uniform(-1, 1, (6, 4)).astype(np.float32)
    (out,) = run_src(program(LN, ln_inputs(x)), ln_inputs(x), float64=False)
    d = x - x.mean(-1, keepdims=True)
    plain = d * (1 / np.sqrt((d * d).mean(-1, keepdims=True) + np.float32(1e-5)))
    np.testing.assert_array_equal(out, plain)


def test_layer_norm_of_an_infinite_row_is_nan_not_a_finite_answer() -> None:
    x = np.array([[INF, 1.0, 2.0, 3.0], [1.0, 2.0, 3.0, 4.0]], np.float32)
    (out,) = run_src(program(LN, ln_inputs(x)), ln_inputs(x), float64=False)
    assert np.all(np.isnan(out[0])) and np.all(np.isfinite(out[1]))


def test_gelu_at_extreme_inputs_by_design() -> None:
    """docs/language.md lists this difference: torch's float32 gelu overflows to inf
    at 3e38; Ember's halves x first and returns x."""
    x = np.array([3e38, -3e38, 2e38, 10.0, -10.0], np.float32)
    (out,) = run_src(program("gelu(x)", {"x": x}), {"x": x}, float64=False)
    np.testing.assert_array_equal(out, x.clip(0, None))  # x, or 0 below -5.5


def test_dropout_of_a_scalar_in_train_mode_on_triton() -> None:
    x = np.array(3.0, np.float32)
    got, want = run_both(program("dropout(x, p=0.5)", {"x": x}), {"x": x}, train=True)
    assert_matches(got, want)
