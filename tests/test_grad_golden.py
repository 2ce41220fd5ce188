"""Golden files: the backward of one small model at each stage of `--grad`.

`ember compile tests/golden/tiny.ember --entry loss --grad --emit STAGE` is
compared with tests/golden/tiny.STAGE.txt, so a reader can see each
transformation (the forward pipeline, the raw gradient pass, the optimized
joint graph, its kernels) and a change to any of them shows up in review.
Refresh after an intended change with `EMBER_UPDATE_GOLDEN=1 pytest
tests/test_grad_golden.py`.
"""

from __future__ import annotations

import contextlib
import io
import os

import pytest
from util import ROOT

from ember import cli

GOLDEN = ROOT / "tests" / "golden"
STAGES = ("recognize", "grad", "opt", "kernels")


def _emit(stage: str) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        rc = cli.main(["compile", "tests/golden/tiny.ember", "--entry", "loss", "--grad",
                       "--emit", stage])
    assert rc == 0
    return out.getvalue()


@pytest.mark.parametrize("stage", STAGES)
def test_grad_stage_matches_golden(stage: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)
    text = _emit(stage)
    path = GOLDEN / f"tiny.{stage}.txt"
    if os.environ.get("EMBER_UPDATE_GOLDEN"):
        path.write_text(text)
    assert text == path.read_text(), f"{path.name} differs: refresh with EMBER_UPDATE_GOLDEN=1"


def test_backward_nodes_keep_the_forward_line() -> None:
    """Every node of the joint graph names a line of the model (backward nodes
    the line they differentiate), so kernel headers point at the DSL."""
    text = (GOLDEN / "tiny.grad.txt").read_text()
    body = [line for line in text.splitlines() if " = " in line]
    assert body and all("tiny.ember:" in line for line in body)
