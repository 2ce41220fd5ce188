"""Named results: `-> (logits: f32[B, C], loss: f32[])` names an entry's
outputs in the graph, in `ember run`'s report and in its `-o` file, instead of
out0, out1; `--grad` still differentiates the first. Naming some results but
not all, or one name twice, is a located error."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from util import compile_src

from ember import api, cli
from ember.ir.loc import DSLError

NAMED = """model M {
  param w: f32[4, 3] = glorot_uniform
  def forward(x: f32[B, 4], y: i32[B]) -> (loss: f32[], logits: f32[B, 3]) {
    let logits = x @ w
    return cross_entropy(logits, y), logits
  }
}
"""


def test_names_are_the_graph_outputs() -> None:
    g = compile_src(NAMED)
    assert g.output_names == ("loss", "logits")
    single = compile_src(NAMED.replace("(loss: f32[], logits: f32[B, 3])", "logits: f32[B, 3]")
                         .replace("return cross_entropy(logits, y), logits", "return logits"))
    assert single.output_names == ("logits",)


def test_names_reach_the_report_and_the_file(tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    model, out = tmp_path / "m.ember", tmp_path / "out.npz"
    model.write_text(NAMED)
    assert cli.main(["run", str(model), "--dims", "B=2", "--grad", "-o", str(out)]) == 0
    report = capsys.readouterr().out
    assert "loss: float32 []" in report and "logits: float32 [2, 3]" in report
    with np.load(out) as f:
        assert sorted(f.files) == ["grad.w", "logits", "loss"]


def test_grad_differentiates_the_first_named_result() -> None:
    g = api.compile_program(api.parse(NAMED, "m.ember"), grad=True)
    assert g.output_names == ("loss", "logits", "grad.w")


@pytest.mark.parametrize("ret, message, col", [
    ("(loss: f32[], f32[B, 3])", "name every result or none: this one has no name", 57),
    ("(a: f32[], a: f32[B, 3])", "result 'a' is named twice", 54),
])
def test_bad_names_are_located(ret: str, message: str, col: int) -> None:
    src = NAMED.replace("(loss: f32[], logits: f32[B, 3])", ret)
    with pytest.raises(DSLError) as e:
        compile_src(src)
    assert e.value.message == message and (e.value.loc.line, e.value.loc.col) == (3, col)
