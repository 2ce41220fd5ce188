"""Command-line hygiene: conflicting or meaningless options are errors, messages
are safe to print, and hostile files give a clean error, never a traceback.

Argument errors that argparse can see alone exit 2 (usage); errors that need
the model or a file exit 1. Every case runs `ember.cli.main` in process (the
code the installed command runs) and checks the exit code and the message.
"""

from __future__ import annotations

import json
import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest
from test_reliability_files import ember  # tests/test_reliability_files.py

MODEL = "model M {\n  def forward(x: f32[B, 4]) { return relu(x) }\n}\n"


@pytest.fixture
def here(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "m.ember").write_text(MODEL)
    np.save(tmp_path / "x.npy", np.ones((2, 4), np.float32))
    np.savez(tmp_path / "in.npz", x=np.ones((2, 4), np.float32))
    return tmp_path


CASES = {
    "same --input twice": (["run", "m.ember", "--input", "x=x.npy", "--input", "x=x.npy"], 1,
                           "input 'x' is given twice, by 'x.npy' and by 'x.npy'"),
    "--input and --inputs": (["run", "m.ember", "--inputs", "in.npz", "--input", "x=x.npy"], 1,
                             "input 'x' is given twice, by 'in.npz' and by 'x.npy'"),
    "a dim twice": (["run", "m.ember", "--dims", "B=2,B=3"], 2,
                    "argument --dims: B is given twice (B=2 and B=3)"),
    "an unknown dim": (["run", "m.ember", "--dims", "B=2,Q=3"], 1,
                       "--dims Q: M.forward has no dimension Q (its dimensions: B)"),
    "a misspelled dim": (["compile", "m.ember", "--dims", "BB=2"], 1, "did you mean B?"),
    "-o with --emit opt": (["compile", "m.ember", "-o", "out"], 2,
                           "-o writes the generated module: it needs --emit triton, not "
                           "--emit opt"),
    "--json without a report": (["compile", "m.ember", "--emit", "kernels", "--json"], 2,
                                "--json prints the report as JSON: it needs --emit report"),
    "--seed -1": (["run", "m.ember", "--seed", "-1"], 2,
                  "argument --seed: expected an integer in [0, 2**63), found '-1'"),
    "an absurd dim": (["run", "m.ember", "--dims", "B=" + "1" + "0" * 30], 2,
                      "dims are at most 1099511627776"),
    "a non-ASCII digit": (["run", "m.ember", "--dims", "B=\u00b2"], 2,
                          "expected NAME=INT[,NAME=INT...], found 'B=\u00b2'"),
    "a dim too large for memory": (["run", "m.ember", "--dims", "B=1000000000000"], 1,
                                   "the inputs would need 14.6 TiB (input 'x': "
                                   "f32[1000000000000, 4] alone is 14.6 TiB), more than this "
                                   "machine's"),
}


@pytest.mark.parametrize("case", CASES)
def test_conflicting_or_meaningless_options(here: Path, capsys: pytest.CaptureFixture[str],
                                            case: str) -> None:
    args, code, message = CASES[case]
    rc, err = ember(capsys, *args)
    assert rc == code, err
    assert message in err
    assert "Traceback" not in err
    assert not (here / "out").exists()


def test_huge_parameters_are_refused_before_allocating(
        here: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (here / "big.ember").write_text(
        "model M {\n  param w: f32[1000000, 1000000] = normal\n"
        "  def forward(x: f32[B, 1000000]) { return x @ w }\n}\n")
    rc, err = ember(capsys, "run", "big.ember", "--dims", "B=1")
    assert rc == 1
    assert "the parameters would need 3.64 TiB (w: f32[1000000, 1000000] alone is 3.64 TiB)" \
        in err


def test_control_bytes_are_escaped(here: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for args in (["run", "m.ember", "--dims", "\x1b[31mB=2"],
                 ["run", "m.ember", "--input", "\x1b[2Jx=x.npy"],
                 ["run", "m.ember", "--input", "x=\x07missing.npy"]):
        rc, err = ember(capsys, *args)
        assert rc in (1, 2)
        assert "\x1b" not in err and "\x07" not in err
        assert "\\x1b" in err or "\\x07" in err


def test_a_100k_argument_is_cut(here: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, err = ember(capsys, "run", "m.ember", "--input", "y" * 100_000 + "=x.npy")
    assert rc == 1
    assert max(map(len, err.splitlines())) < 600
    assert "more characters)" in err


def test_a_100k_source_line_is_shown_around_the_caret(
        here: Path, capsys: pytest.CaptureFixture[str]) -> None:
    line = "  def forward(x: f32[B, 4]) { return " + " " * 100_000 + "nope }  # " + "z" * 9_000
    (here / "long.ember").write_text("model M {\n" + line + "\n}\n")
    rc, err = ember(capsys, "compile", "long.ember")
    assert rc == 1
    first, source, caret = err.splitlines()[:3]
    assert first.startswith(f"long.ember:2:{line.index('nope') + 1}: error:")
    assert max(len(source), len(caret)) < 200
    # the caret still sits under the name it points at
    at = caret.index("^")
    assert source[at:at + 4] == "nope"


def test_a_byte_order_mark_is_accepted(here: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (here / "bom.ember").write_bytes(b"\xef\xbb\xbf" + MODEL.encode())
    rc, err = ember(capsys, "run", "bom.ember", "--dims", "B=2")
    assert rc == 0, err


def test_whole_file_errors_point_at_the_file(here: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    (here / "empty.ember").write_text("# no model here\n")
    rc, err = ember(capsys, "compile", "empty.ember")
    assert rc == 1
    assert err.startswith("empty.ember:1:1: error: a program must define exactly one model, "
                          "found 0")


@pytest.mark.parametrize("option", ["--inputs", "--params"])
def test_an_npz_member_that_is_not_an_array(here: Path, capsys: pytest.CaptureFixture[str],
                                            option: str) -> None:
    with zipfile.ZipFile(here / "odd.npz", "w") as z:
        z.writestr("notes.txt", "hello")
    rc, err = ember(capsys, "run", "m.ember", "--dims", "B=2", option, "odd.npz")
    assert rc == 1
    assert "'odd.npz' holds 'notes.txt', which is not a .npy array" in err


def test_a_deeply_nested_safetensors_header(here: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    header = ("[" * 100_000 + "]" * 100_000).encode()
    (here / "deep.safetensors").write_bytes(struct.pack("<Q", len(header)) + header)
    rc, err = ember(capsys, "run", "m.ember", "--dims", "B=2", "--params", "deep.safetensors")
    assert rc == 1
    assert "bad safetensors header (nested too deeply)" in err


def test_a_safetensors_header_of_the_wrong_shape(here: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    header = json.dumps({"w": {"dtype": "F32", "shape": [3, 5], "data_offsets": [0, 4]}}).encode()
    (here / "bad.safetensors").write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * 4)
    rc, err = ember(capsys, "run", "m.ember", "--dims", "B=2", "--params", "bad.safetensors")
    assert rc == 1 and "cannot read parameter file 'bad.safetensors'" in err


def test_a_single_array_is_not_a_parameter_archive(here: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    (here / "one.npz").write_bytes((here / "x.npy").read_bytes())
    rc, err = ember(capsys, "run", "m.ember", "--dims", "B=2", "--params", "one.npz")
    assert rc == 1
    assert "'one.npz': a single .npy array, not an .npz archive of named arrays" in err
