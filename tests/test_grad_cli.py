"""`--grad` on the command line (in process, through `ember.cli.main`).

An entry whose first output is not a float scalar is a located error (file,
line, column and a caret under the returned expression) with exit code 1, as
is any gradient option without `--grad`; `--emit grad` prints the gradient
pass's graph; `--grad-inputs` adds the float inputs' gradients to
`--save-grads`, keyed `input.<name>`; `--backend triton --check` checks every
gradient against the oracle.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from util import MODELS

from ember import api, cli
from ember.ir.loc import DSLError
from ember.runtime.params_io import load_params

MLP = str(MODELS / "mlp.ember")
# Entries whose first output cannot be differentiated, and the line it is returned on.
NOT_SCALAR = """\
model M {
  param w: f32[3] = ones
  def forward(x: f32[B, 3]) -> f32[B, 3] { return x * w }
  def pick(x: f32[B, 3]) -> i32[] { return argmax(sum(x * w, axis=0), axis=0) }
  def pair(x: f32[B, 3]) -> (f32[B], f32[]) { return sum(x * w, axis=1), sum(x * w) }
  def scalar_first(x: f32[B, 3]) -> (f32[], f32[B]) { return sum(x * w), sum(x * w, axis=1) }
}
"""


@pytest.fixture
def model_file(tmp_path: Path) -> str:
    path = tmp_path / "m.ember"
    path.write_text(NOT_SCALAR)
    return str(path)


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    rc = cli.main(list(args))
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.mark.parametrize("command", ["run", "compile"])
@pytest.mark.parametrize("entry,line,found", [("forward", 3, "f32[2, 3]"), ("pick", 4, "i32[]"),
                                              ("pair", 5, "f32[2]")])
def test_grad_of_a_non_scalar_entry_is_a_located_error(capsys, model_file, command, entry,
                                                       line, found):
    rc, out, err = run(capsys, command, model_file, "--entry", entry, "--grad", "--dims", "B=2")
    assert rc == 1
    assert re.match(rf"{re.escape(model_file)}:{line}:\d+: error: gradients need an entry "
                    rf"whose first output is a float scalar; 'M\.{entry}' returns "
                    rf"{re.escape(found)}", err), err
    source_line = NOT_SCALAR.splitlines()[line - 1]
    assert source_line in err and "^" in err.splitlines()[-1]
    assert "Traceback" not in err


def test_only_the_first_output_needs_to_be_a_scalar(capsys, model_file):
    rc, out, err = run(capsys, "run", model_file, "--entry", "scalar_first", "--grad",
                       "--dims", "B=2", "--backend", "numpy")
    assert rc == 0, err
    assert re.search(r"^grad\.w: float32 \[3\]", out, re.M)


@pytest.mark.parametrize("option", [["--save-grads", "g.npz"], ["--grad-inputs"]])
def test_gradient_options_need_grad(capsys, tmp_path, option):
    if option[0] == "--save-grads":
        option = [option[0], str(tmp_path / option[1])]
    rc, out, err = run(capsys, "run", MLP, "--entry", "loss", "--dims", "B=2", *option)
    assert rc == 1
    assert err.strip() == f"ember: error: {option[0]} needs --grad"
    assert not (tmp_path / "g.npz").exists()


def test_emit_grad_prints_the_gradient_pass(capsys):
    rc, out, err = run(capsys, "compile", MLP, "--entry", "loss", "--grad", "--emit", "grad")
    assert rc == 0, err
    # the loss, then one gradient per parameter (hidden.w, hidden.bn.weight,
    # hidden.bn.bias, out.w, out.b)
    returned = re.search(r"^  return (.*)$", out, re.M)
    assert returned is not None and len(returned.group(1).split(", ")) == 6
    # backward nodes name the DSL line they differentiate
    assert re.search(r"= permute .*# .*mlp\.ember:8:58$", out, re.M)
    rc, _, err = run(capsys, "compile", MLP, "--entry", "loss", "--emit", "grad")
    assert rc == 1 and "--emit grad shows the gradient pass's output: add --grad" in err


@pytest.mark.parametrize("emit", ["opt", "kernels", "report"])
def test_later_stages_with_grad(capsys, emit):
    rc, out, err = run(capsys, "compile", MLP, "--entry", "loss", "--grad", "--emit", emit,
                       "--dims", "B=2")
    assert rc == 0, err
    assert out and err == ""


def test_grad_inputs_are_saved_by_name(capsys, tmp_path):
    path = tmp_path / "grads.npz"
    rc, out, err = run(capsys, "run", MLP, "--entry", "loss", "--grad", "--grad-inputs",
                       "--dims", "B=3", "--backend", "numpy", "--save-grads", str(path))
    assert rc == 0, err
    grads = load_params(path)
    # batch norm's running statistics are buffers: no gradient
    params = {"hidden.w", "hidden.bn.weight", "hidden.bn.bias", "out.w", "out.b"}
    assert set(grads) == params | {"input.x"}  # y is an integer label: no gradient
    assert grads["input.x"].shape == (3, 64) and np.any(grads["input.x"])
    assert f"saved 6 gradients to {path}" in out


def test_grad_with_respect_to_an_unknown_input_is_an_error():
    with pytest.raises(DSLError, match="no float input 'ids' to differentiate with respect "
                                       "to; 'Mlp.loss' has float inputs: x"):
        api.compile_file(MLP, "loss", grad=True, grad_inputs=["ids"])
    with pytest.raises(DSLError, match="no float input 'y'"):
        api.compile_file(MLP, "loss", grad=True, grad_inputs=["y"])


def test_triton_check_covers_every_gradient(capsys, tmp_path):
    path = tmp_path / "grads.safetensors"
    rc, out, err = run(capsys, "run", MLP, "--entry", "loss", "--grad", "--train", "--dims",
                       "B=3", "--backend", "triton", "--check", "--save-grads", str(path))
    assert rc == 0, out + err
    checked = re.findall(r"^check (\S+): .* ok$", out, re.M)
    grads = ["hidden.w", "hidden.bn.weight", "hidden.bn.bias", "out.w", "out.b"]
    new_stats = ["new.hidden.bn.running_mean", "new.hidden.bn.running_var"]  # --train
    assert checked == ["loss", *new_stats, *(f"grad.{g}" for g in grads)]
    assert set(load_params(path)) == set(grads)
