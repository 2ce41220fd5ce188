"""Tests of the `ember` command line: `compile` and `run` on every model.

The compile matrix (every --emit for every model) calls `ember.cli.main` in
process, which is the code the installed command runs; everything else runs the
real command in a subprocess (`python -m ember` or the `ember` script), a few
runs each covering several options, to keep the file fast.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from util import MODEL_NAMES, MODELS  # tests/util.py

import ember
from ember import api, cli
from ember.ir.graph import Graph, walk_nodes
from ember.ir.ops import Op
from ember.ir.printer import print_graph

DIMS = {"mlp": "B=3", "lenet": "B=2", "resnet": "B=2", "lstm": "B=2,T=3",
        "transformer": "B=2,T=5"}
SCRIPT = Path(sys.executable).with_name("ember")  # the console script next to this python


def ember_cmd(cwd: Path, *args: str, script: bool = False) -> str:
    """Run the CLI in a subprocess; it must succeed; its stdout."""
    cmd = [str(SCRIPT)] if script else [sys.executable, "-m", "ember"]
    r = subprocess.run([*cmd, *args], cwd=cwd, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stderr == ""
    return r.stdout


def summary(name: str, v: np.ndarray) -> str:
    """The line `ember run` prints for one output."""
    f = v.astype(np.float64)
    shape = "[" + ", ".join(map(str, v.shape)) + "]"
    return (f"{name}: {v.dtype} {shape}  min {f.min():.6g}  max {f.max():.6g}  "
            f"mean {f.mean():.6g}  std {f.std():.6g}")


def load(path: Path) -> dict[str, np.ndarray]:
    with np.load(path) as f:
        return {k: f[k] for k in f.files}


# ---- compile ---------------------------------------------------------------------

@pytest.mark.parametrize("model", MODEL_NAMES)
def test_compile_every_stage(model: str, capsys: pytest.CaptureFixture[str],
                             monkeypatch: pytest.MonkeyPatch) -> None:
    path = str(MODELS / f"{model}.ember")
    verified: list[Graph] = []
    real_verify = api.verify
    monkeypatch.setattr(api, "verify", lambda g: verified.append(real_verify(g)) or g)

    assert cli.main(["compile", path, "--emit", "ast"]) == 0
    assert capsys.readouterr().out.startswith("Program()\n  items:\n")
    assert verified == []  # the AST stage builds no IR

    assert cli.main(["compile", path, "--emit", "ir", "--dims", DIMS[model]]) == 0
    ir_text = capsys.readouterr().out
    assert ir_text.startswith("graph ") and ir_text.endswith("}\n")
    assert " = call " in ir_text or " = loop " in ir_text  # regions are still there
    assert re.match(r"  %0:\w+\[\d", ir_text.splitlines()[1])  # --dims bound the batch size

    verified.clear()
    assert cli.main(["compile", path, "--emit", "opt", "--entry", "loss"]) == 0
    opt_text = capsys.readouterr().out
    (g,) = verified  # the command ran the verifier on what it printed
    assert opt_text == print_graph(g) + "\n"
    assert g.output_names == ("loss",) and g[g.outputs[0]].type.shape == ()
    assert not any(n.op is Op.CALL for n in walk_nodes(g))  # inlined
    assert opt_text.startswith("graph ") and " = call " not in opt_text


def test_compile_subprocess_matches_in_process(tmp_path: Path) -> None:
    out = ember_cmd(tmp_path, "compile", str(MODELS / "lstm.ember"), "--dims", "T=4",
                    script=SCRIPT.exists())
    g = api.compile_file(MODELS / "lstm.ember", dims={"T": 4})
    assert out == print_graph(g) + "\n"
    assert "length=4" in out


def test_version(tmp_path: Path) -> None:
    assert ember_cmd(tmp_path, "--version") == f"ember {ember.__version__}\n"


# ---- run -------------------------------------------------------------------------

@pytest.mark.parametrize("model, entry", [("lenet", "loss"), ("resnet", "forward"),
                                          ("lstm", "forward")])
def test_run_model(tmp_path: Path, model: str, entry: str) -> None:
    out = ember_cmd(tmp_path, "run", str(MODELS / f"{model}.ember"), "--entry", entry,
                    "--dims", DIMS[model], "-o", "out.npz")
    outs = load(tmp_path / "out.npz")
    assert list(outs) == [entry]
    lines = out.splitlines()
    n_params = len(api.param_types(api.compile_file(MODELS / f"{model}.ember", entry)))
    assert lines[0].startswith("backend: ")  # numpy here, triton where there is a GPU
    assert lines[1] == f"initialized {n_params} parameters with seed 0"
    assert lines[-2:] == [summary(entry, outs[entry]), f"wrote {entry} to out.npz"]
    assert all(line.startswith("input ") and "(seed 0)" in line for line in lines[2:-2])
    assert np.isfinite(outs[entry]).all()
    if entry == "loss":
        assert outs["loss"].shape == () and outs["loss"].dtype == np.float32


def test_run_params_npz_round_trip_with_input_files(tmp_path: Path) -> None:
    """--save-params then --params (.npz) reproduce the outputs exactly, whatever the seed;
    --inputs FILE.npz and --input NAME=FILE.npy feed the same values."""
    model = str(MODELS / "transformer.ember")
    ids = np.random.default_rng(7).integers(0, 64, (2, 5)).astype(np.int32)
    np.savez(tmp_path / "inputs.npz", ids=ids)
    np.save(tmp_path / "ids.npy", ids)
    first = ember_cmd(tmp_path, "run", model, "--inputs", "inputs.npz", "-o", "a.npz",
                      "--save-params", "p.npz")
    assert "saved parameters to p.npz" in first and "random" not in first
    second = ember_cmd(tmp_path, "run", model, "--input", "ids=ids.npy", "--params", "p.npz",
                       "--seed", "5", "-o", "b.npz")
    assert "loaded 37 parameters from p.npz" in second
    a, b = load(tmp_path / "a.npz"), load(tmp_path / "b.npz")
    assert a["forward"].shape == (2, 5, 64) and a["forward"].dtype == np.float32
    np.testing.assert_array_equal(a["forward"], b["forward"])
    g = api.compile_file(model)
    params = load(tmp_path / "p.npz")
    expected = api.run(g, {"ids": ids}, params)["forward"]
    np.testing.assert_array_equal(a["forward"], expected)


def test_run_safetensors_round_trip_seed_and_train(tmp_path: Path) -> None:
    """Same seed, same result; --params .safetensors reproduces it; another seed or
    --train (dropout) changes it."""
    model = str(MODELS / "mlp.ember")

    def run(*args: str) -> np.ndarray:
        ember_cmd(tmp_path, "run", model, "--dims", "B=3", "-o", "o.npz", *args)
        return load(tmp_path / "o.npz")["forward"]

    base = run("--seed", "3", "--save-params", "p.safetensors")
    assert base.shape == (3, 10)
    np.testing.assert_array_equal(run("--seed", "3"), base)
    np.testing.assert_array_equal(run("--seed", "3", "--params", "p.safetensors"), base)
    assert not np.array_equal(run("--seed", "4"), base)
    trained = run("--seed", "3", "--train")
    assert not np.array_equal(trained, base) and np.isfinite(trained).all()

    st = pytest.importorskip("safetensors.numpy")
    theirs = st.load_file(str(tmp_path / "p.safetensors"))  # the file is real safetensors
    g = api.compile_file(model)
    ours = api.init_params(g, 3)
    assert sorted(theirs) == sorted(ours) == sorted(api.param_types(g))
    for k in ours:
        np.testing.assert_array_equal(theirs[k], ours[k])


def test_run_precision_f64(tmp_path: Path) -> None:
    model = str(MODELS / "lstm.ember")
    out = ember_cmd(tmp_path, "run", model, "--dims", "B=2,T=3", "--precision", "f64",
                    "-o", "f64.npz")
    assert "input x: random f64[2, 3, 8] ~ N(0, 1) (seed 0)" in out
    f64 = load(tmp_path / "f64.npz")["forward"]
    assert f64.dtype == np.float64 and summary("forward", f64) in out
    # the same draws in f32, run in process: agrees to f32 rounding
    g = api.compile_file(model, dims={"B": 2, "T": 3})
    x = np.random.default_rng(1).standard_normal((2, 3, 8)).astype(np.float32)
    f32 = api.run(g, {"x": x}, api.init_params(g, 0))["forward"]
    np.testing.assert_allclose(f64, f32, rtol=1e-4, atol=1e-5)


def test_python_dash_m_and_script_agree(tmp_path: Path) -> None:
    args = ("run", str(MODELS / "mlp.ember"), "--dims", "B=2", "--backend", "numpy")
    via_m = ember_cmd(tmp_path, *args)
    assert via_m.startswith("backend: numpy (requested)\n")
    if os.access(SCRIPT, os.X_OK):
        assert ember_cmd(tmp_path, *args, script=True) == via_m
