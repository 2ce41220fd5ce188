"""Regression tests: no input a user can write makes the language front end
print a traceback or hang (issue 9).

Long flat expressions compile; absurd nesting, oversized constants and
meaningless arithmetic stop with a located DSLError. Most cases go through the
API (in process, fast); a few go through the CLI to prove what the user sees.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from test_errors import ember  # the CLI in a subprocess
from util import compile_src, run_src  # tests/util.py

from ember import api
from ember.ir.loc import DSLError
from ember.ir.ops import Op
from ember.ir.printer import print_graph


def model(body: str, args: str = "x: f32[4]", ret: str = "f32[4]", head: str = "") -> str:
    return f"{head}model M {{\n  def forward({args}) -> {ret} {{\n    return {body}\n  }}\n}}\n"


def error_of(src: str, **kw: object) -> DSLError:
    with pytest.raises(DSLError) as info:
        compile_src(src, **kw)  # type: ignore[arg-type]
    return info.value


X = np.arange(4.0) - 1.5


# ---- deep and long expressions -------------------------------------------------------


def test_500_term_sum_compiles_and_runs() -> None:
    src = model(" + ".join(f"x * {k}.0" for k in range(500)))
    (out,) = run_src(src, {"x": X})
    np.testing.assert_allclose(out, X * sum(range(500)), rtol=1e-12)


def test_500_term_sum_generates_a_kernel() -> None:
    from ember.codegen.module import emit_triton
    emit_triton(compile_src(model(" + ".join(f"x * {k}.0" for k in range(500)))))


def test_1000_nested_unary_minus_is_the_identity() -> None:
    (out,) = run_src(model("-" * 1000 + "(x * 2.0)"), {"x": X})
    np.testing.assert_array_equal(out, 2 * X)


def test_500_nested_powers_lower_in_order() -> None:
    g = compile_src(model(" ** ".join(["x"] * 500)), stage="ir")
    assert sum(n.op is Op.POW for n in g.nodes) == 499
    assert "pow" in print_graph(g)


def test_3000_term_constant_sum_folds() -> None:
    (out,) = run_src(model("x * k", head=f"const k = {' + '.join(['1'] * 3000)}\n"), {"x": X})
    np.testing.assert_array_equal(out, 3000 * X)


def test_absurdly_nested_calls_are_a_located_error() -> None:
    e = error_of(model("relu(" * 500 + "x" + ")" * 500))
    assert "nested too deeply" in e.message
    assert (e.loc.line, e.loc.col) == (3, 12 + 5 * 100)  # the call 100 levels in


def test_nesting_just_under_the_limit_compiles() -> None:
    g = compile_src(model("relu(" * 90 + "x" + ")" * 90), stage="ir")
    assert sum(n.op is Op.RELU for n in g.nodes) == 90


def test_deep_nesting_through_the_cli(tmp_path: Path) -> None:
    (tmp_path / "m.ember").write_text(model("exp(" * 300 + "x" + ")" * 300))
    r = ember(tmp_path, "compile", "m.ember")
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert r.stderr.startswith("m.ember:3:412: error: nested too deeply: more than 100 levels")


def test_long_sum_through_the_cli(tmp_path: Path) -> None:
    (tmp_path / "m.ember").write_text(model(" + ".join(["x"] * 500)))
    r = ember(tmp_path, "run", "m.ember", "--backend", "numpy")
    assert r.returncode == 0, r.stderr
    assert r.stderr == ""


# ---- compile-time number arithmetic --------------------------------------------------

CONST_ERRORS = [
    ("9 ** 9 ** 9", "9 ** 387420489 is too large (about 3.7e+08 digits); compile-time integers "
                    "are limited to 1000 digits"),
    ("2 ** 100000", "2 ** 100000 is too large (about 3.01e+04 digits)"),
    ("(10 ** 999) * 10", "100000... (about 1000 digits) * 10 is too large (about 1e+03 digits)"),
    ("2 @ 3", "operator '@' does not apply to the number 2 and the number 3"),
    ("(-8) ** 0.5", "(-8) ** 0.5 is not a real number"),
    ("1e308 * 10", "1e+308 * 10 overflows a float (about 1.8e308)"),
    ("2.0 ** 2000", "2.0 ** 2000 overflows a float"),
    ("10 ** 400 * 1.0", "100000... (about 401 digits) * 1.0 overflows a float"),
    ("1e999", "the number 1e999 is too large for a float (about 1.8e308)"),
    ("9" * 5000, "the number 999999999999... has 5000 digits; compile-time integers are "
                 "limited to 1000 digits"),
    ("0 ** -1", "division by zero in 0 ** (-1)"),
]


@pytest.mark.parametrize("expr, message", CONST_ERRORS, ids=[c[0][:12] for c in CONST_ERRORS])
def test_constant_arithmetic_errors_are_located(expr: str, message: str) -> None:
    e = error_of(model("x * k", head=f"const k = {expr}\n"))
    assert e.message.startswith(message)
    assert (e.loc.line, e.loc.col) == (1, 11)


def test_constant_power_is_bounded_in_time_through_the_cli(tmp_path: Path) -> None:
    (tmp_path / "m.ember").write_text(model("x * k", head="const k = 9 ** 9 ** 9\n"))
    r = ember(tmp_path, "compile", "m.ember")  # the subprocess timeout catches a hang
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert "m.ember:1:11: error: 9 ** 387420489 is too large" in r.stderr


def test_large_integers_stay_exact_until_they_meet_a_tensor() -> None:
    (out,) = run_src(model("x * k", head="const k = 2 ** 2000 // 2 ** 1999\n"), {"x": X})
    np.testing.assert_array_equal(out, 2 * X)
    e = error_of(model("x * k", head="const k = 2 ** 1023 * 2\n"))
    assert e.message == "the constant 179769... (about 309 digits) does not fit in f64"
    assert (e.loc.line, e.loc.col) == (4, 12)


def test_float_constant_beyond_f32_is_an_error_not_inf() -> None:
    e = error_of(model("x * -1e39"), float64=False)
    assert e.message == "the constant -1e+39 does not fit in f32 [-3.4028e+38, 3.4028e+38]"
    assert run_src(model("x * -1e39"), {"x": X})[0][0] == 1.5e39  # fits in f64


def test_folding_overflow_is_quiet_and_means_what_running_means() -> None:
    with np.errstate(all="raise"):  # any NumPy warning during folding would raise here
        g = compile_src(model("x * exp(1000.0) + log(0.0)"))
    values = sorted(n.attrs["value"] for n in g.nodes if n.op is Op.CONST)
    assert values == [-np.inf, np.inf]


# ---- initializer arguments ------------------------------------------------------------

INIT_ERRORS = [
    ("normal(-1)", "the standard deviation must be in [0, 3.4e+37], found -1"),
    ("normal(1e38)", "the standard deviation must be in [0, 3.4e+37], found 1e+38"),
    ("uniform(5, 1)", "uniform(lo, hi) needs lo <= hi, found 5 > 1"),
    ("uniform(-1)", "uniform(a) draws from U(-a, a), so a must be >= 0, found -1"),
    ("uniform(1e39)", "arguments must be finite and within float32's range (about 3.4e+38)"),
]


def layer_with(init: str, dtype: str = "f32") -> str:
    return (f"model M {{\n  param w: {dtype}[4] = {init}\n"
            f"  def forward(x: {dtype}[4]) -> {dtype}[4] {{ return x * w }}\n}}\n")


@pytest.mark.parametrize("init, problem", INIT_ERRORS, ids=[c[0] for c in INIT_ERRORS])
def test_initializer_arguments_checked_at_compile_time(init: str, problem: str) -> None:
    e = error_of(layer_with(init), float64=False)
    assert e.message == f"initializer '{init.split('(')[0]}' of parameter 'w': {problem}"
    assert (e.loc.line, e.loc.col, e.loc.end_col) == (2, 21, 21 + len(init))


def test_initializer_argument_beyond_any_float_is_a_parse_error() -> None:
    e = error_of(layer_with("normal(1e309)"))
    assert e.message.startswith("the number 1e309 is too large")
    assert (e.loc.line, e.loc.col) == (2, 28)


def test_initializer_limits_follow_the_parameter_dtype() -> None:
    compile_src(layer_with("normal(1e38)", "f64"))  # fine in float64
    g = compile_src(layer_with("uniform(-3e38, 3e38)"), float64=False)
    (w,) = api.init_params(g).values()
    assert w.dtype == np.float32 and np.all(np.isfinite(w))


def test_bad_initializer_through_the_cli(tmp_path: Path) -> None:
    (tmp_path / "m.ember").write_text(layer_with("uniform(5, 1)"))
    r = ember(tmp_path, "compile", "m.ember")
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert r.stderr.startswith("m.ember:2:21: error: initializer 'uniform' of parameter 'w'")


def test_deeply_nested_loops_and_layers_are_located_errors() -> None:
    loops = "".join(f"for t{k} in range(2) {{\n" for k in range(300)) + "x = x + 1.0\n"
    loops += "}\n" * 300
    e = error_of(f"model M {{\n  def forward(x: f32[4]) -> f32[4] {{\n{loops}return x\n}}\n}}\n")
    assert e.message.startswith("nested too deeply") and e.loc.line == 102
    layers = ["layer L0 { def forward(x: f32[4]) -> f32[4] { return x } }"] + [
        f"layer L{k} {{ layer inner: L{k - 1}\n def forward(x: f32[4]) -> f32[4] "
        "{ return inner(x) } }" for k in range(1, 400)]
    src = "\n".join(layers) + "\nmodel M {\n  layer top: L399\n" \
        "  def forward(x: f32[4]) -> f32[4] { return top(x) }\n}\n"
    e = error_of(src)
    assert e.message == "layers are nested too deeply (more than 100 levels)"
    assert e.loc.line == 602  # `layer inner: L299`, the 101st level


def test_a_chain_of_user_functions_counts_toward_the_nesting() -> None:
    fns = ["def f0(x: f32[4]) -> f32[4] { return x }"] + [
        f"def f{k}(x: f32[4]) -> f32[4] {{ return exp(f{k - 1}(x)) }}" for k in range(1, 150)]
    e = error_of("\n".join(fns) + "\n" + model("f149(x)"))
    assert e.message.startswith("nested too deeply") and e.loc.known
    compile_src("\n".join(fns[:40]) + "\n" + model("f39(x)"))  # 40 deep is fine
