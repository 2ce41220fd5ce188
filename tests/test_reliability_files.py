"""Ember never loses a user's file.

An output that resolves to an input of the same command (the model, --params,
--inputs, an --input file; through a symlink or a hard link too) or to another
output is refused before anything runs. Every file is written to a temporary
file beside the target and renamed into place, so a failed write (a full disk,
a file-size limit) leaves the old file whole and no temporary file behind.
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ember import cli
from ember.ir.loc import DSLError
from ember.runtime.files import write_atomic

MODEL = ("model M {\n  param w: f32[4, 4] = normal\n"
         "  def forward(x: f32[B, 4]) { return x @ w }\n}\n")


def ember(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    """Run the CLI in process; (exit code, stderr)."""
    try:
        rc = cli.main(list(args))
    except SystemExit as e:  # argparse
        rc = int(e.code or 0)
    return rc, capsys.readouterr().err


@pytest.fixture
def files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """m.ember, p.npz (its parameters), in.npz and x.npy (an input), in tmp_path."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "m.ember").write_text(MODEL)
    np.savez(tmp_path / "p.npz", w=np.eye(4, dtype=np.float32))
    np.savez(tmp_path / "in.npz", x=np.ones((2, 4), np.float32))
    np.save(tmp_path / "x.npy", np.ones((2, 4), np.float32))
    return tmp_path


def snapshot(d: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(d.iterdir()) if p.is_file()}


INPUTS = {"the model file": [], "--params": ["--params", "p.npz"],
          "--inputs": ["--inputs", "in.npz"], "--input": ["--input", "x=x.npy"]}
TARGET = {"the model file": "m.ember", "--params": "p.npz", "--inputs": "in.npz",
          "--input": "x.npy"}


@pytest.mark.parametrize("output", ["-o", "--save-params", "--save-grads"])
@pytest.mark.parametrize("source", INPUTS)
def test_an_output_onto_an_input_is_refused(files: Path, capsys: pytest.CaptureFixture[str],
                                            output: str, source: str) -> None:
    before = snapshot(files)
    rc, err = ember(capsys, "run", "m.ember", *INPUTS[source], "--grad", output,
                    TARGET[source])
    assert rc == 1
    assert f"{output} '{TARGET[source]}' is the same file as {source}" in err
    assert "refusing to overwrite an input" in err
    assert snapshot(files) == before


@pytest.mark.parametrize("link", ["symlink", "hardlink", "dotted"])
def test_links_and_spellings_of_an_input_are_the_input(
        files: Path, capsys: pytest.CaptureFixture[str], link: str) -> None:
    if link == "symlink":
        os.symlink("p.npz", files / "alias.npz")
    elif link == "hardlink":
        os.link(files / "p.npz", files / "alias.npz")
    name = "./sub/../p.npz" if link == "dotted" else "alias.npz"
    (files / "sub").mkdir()
    before = (files / "p.npz").read_bytes()
    rc, err = ember(capsys, "run", "m.ember", "--params", "p.npz", "--save-params", name)
    assert rc == 1 and "is the same file as --params 'p.npz'" in err
    assert (files / "p.npz").read_bytes() == before


def test_two_outputs_onto_one_file_are_refused(files: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    rc, err = ember(capsys, "run", "m.ember", "--dims", "B=2", "-o", "out.npz",
                    "--save-params", "out.npz")
    assert rc == 1 and "refusing to overwrite another output" in err
    assert not (files / "out.npz").exists()


def test_a_failed_write_keeps_the_old_file(tmp_path: Path) -> None:
    target = tmp_path / "keep.npz"
    target.write_bytes(b"the good old file")

    def fail(f: object) -> None:
        f.write(b"half of the new")  # type: ignore[attr-defined]
        raise OSError(28, "No space left on device")

    with pytest.raises(DSLError, match="cannot write outputs to .*No space left on device"):
        write_atomic(target, fail, "outputs to")
    assert snapshot(tmp_path) == {"keep.npz": b"the good old file"}


def test_writes_follow_symlinks_and_keep_permissions(files: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    (files / "real.npz").write_bytes(b"old")
    os.chmod(files / "real.npz", 0o640)
    os.symlink("real.npz", files / "link.npz")
    rc, err = ember(capsys, "run", "m.ember", "--dims", "B=2", "-o", "link.npz",
                    "--save-params", "new.npz")
    assert rc == 0, err
    assert (files / "link.npz").is_symlink()
    with np.load(files / "real.npz") as f:
        assert f["forward"].shape == (2, 4)
    assert (files / "real.npz").stat().st_mode & 0o777 == 0o640
    umask = os.umask(0)
    os.umask(umask)
    assert (files / "new.npz").stat().st_mode & 0o777 == 0o666 & ~umask
    assert not [p for p in files.iterdir() if p.name.startswith(".")]


def test_a_file_size_limit_leaves_the_old_parameters(tmp_path: Path) -> None:
    # `ulimit -f 10` used to leave a truncated parameter file (these are 64 KiB)
    good = tmp_path / "params.npz"
    good.write_bytes(b"good parameters")
    (tmp_path / "big.ember").write_text(MODEL.replace("f32[4, 4]", "f32[4, 4096]"))

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (10 * 1024, 10 * 1024))

    r = subprocess.run([sys.executable, "-m", "ember", "run", "big.ember", "--dims", "B=2",
                        "--backend", "numpy", "--save-params", str(good)], cwd=tmp_path,
                       capture_output=True, text=True, timeout=120, preexec_fn=limit)
    assert r.returncode == 1, r.stderr
    assert "cannot write parameter file" in r.stderr and "Traceback" not in r.stderr
    assert snapshot(tmp_path) == {"params.npz": b"good parameters",
                                  "big.ember": (tmp_path / "big.ember").read_bytes()}


def test_generated_modules_are_written_whole(files: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    out = files / "kernels"
    out.mkdir()
    (out / "m_forward.py").write_text("# an older module")
    rc, err = ember(capsys, "compile", "m.ember", "--emit", "triton", "-o", "kernels")
    assert rc == 0, err
    assert "def launch(" in (out / "m_forward.py").read_text()
    assert [p.name for p in out.iterdir()] == ["m_forward.py"]
