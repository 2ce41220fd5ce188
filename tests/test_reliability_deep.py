"""Issue 9 cases found in review: deep syntax trees print, long chains make one
kernel and a chain too long for one is a plain error, an output holding inf
prints no NumPy warning."""

from __future__ import annotations

import subprocess
import sys

import pytest
from util import ROOT, compile_src

from ember.codegen.module import emit_triton
from ember.ir.loc import DSLError, deep_recursion

HEAD = "model M {\n  def forward(x: f32[B, 4]) -> f32[B, 4] { return "


def _ember(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ember", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)


def test_1000_nested_minus_signs_print_as_a_syntax_tree(tmp_path) -> None:
    deep = tmp_path / "deep.ember"
    deep.write_text(HEAD + "-" * 1000 + "(x * 2.0) }\n}\n")
    r = _ember("compile", str(deep), "--emit", "ast")
    assert r.returncode == 0 and "Traceback" not in r.stderr


def test_a_2000_term_chain_is_one_kernel() -> None:
    g = compile_src(HEAD + " + ".join(f"x * {k}.0" for k in range(2000)) + " }\n}\n")
    assert len(emit_triton(g).kernels) == 1


def test_recursion_past_the_budget_is_a_plain_error() -> None:
    """What a chain too long for one kernel (~15,000 ops) gets, without
    building one: deep_recursion turns the RecursionError into a DSLError."""
    def down(n: int) -> int:
        return down(n + 1)
    with pytest.raises(DSLError, match="too long"), deep_recursion("an expression too long"):
        down(0)


def test_an_output_holding_inf_prints_no_numpy_warning(tmp_path) -> None:
    model = tmp_path / "inf.ember"
    model.write_text("model M {\n  def forward(x: f32[2]) -> f32[2] { return x * 1e38 * 1e38 }"
                     "\n}\n")
    r = _ember("run", str(model))
    assert r.returncode == 0 and "Warning" not in r.stderr + r.stdout
