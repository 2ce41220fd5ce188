"""A kernel cache that cannot be used never stops a run, and a broken entry
never poisons later ones.

Through the command line (`ember.cli.main` in process, forgetting imported
kernel modules between runs as a new process would): EMBER_CACHE_DIR naming a
file, and an entry whose manifest matches but whose module does not import.
Against the cache itself: an unwritable cache, a file where an entry directory
should be, stale temporary directories, and the races in which another process
publishes a good entry while this one removes a copy it judged broken.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest

from ember import cli
from ember.runtime import cache as cache_mod
from ember.runtime.cache import MANIFEST, STALE_SECONDS, CodeCache

FILES = {"kernels.py": "def launch(*args):\n    return {}\n", "symbols.json": "[]"}


def run_triton(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
               cache_dir: Path) -> tuple[int, str, str]:
    """`ember run` of a one-kernel model on the Triton backend with EMBER_CACHE_DIR
    set; (exit code, stdout, stderr). Kernel modules imported by an earlier run
    are forgotten first, as a new process would not have them."""
    for name in [m for m in sys.modules if m.startswith("ember_kernels_")]:
        del sys.modules[name]
    model = cache_dir.parent / "tiny.ember"
    model.write_text("model M { def forward(x: f32[4]) { return relu(x) * 2.0 } }\n")
    monkeypatch.setenv("EMBER_CACHE_DIR", str(cache_dir))
    rc = cli.main(["run", str(model), "--backend", "triton"])
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_a_cache_dir_that_is_a_file(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "cache").write_text("not a directory")
    errs = []
    for _ in range(2):
        rc, out, err = run_triton(capsys, monkeypatch, tmp_path / "cache")
        assert rc == 0, err
        assert "forward: float32 [4]" in out
        errs.append(err)
    # warned once per process (in the first run), not once per run
    assert errs[0].count("warning: cannot use the kernel cache") == 1, errs[0]
    assert "Traceback" not in errs[0] and errs[1] == ""
    assert (tmp_path / "cache").read_text() == "not a directory"


def test_a_broken_module_behind_a_good_manifest_is_replaced(
        tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    cache = tmp_path / "cache"
    assert run_triton(capsys, monkeypatch, cache)[0] == 0
    (entry,) = list(cache.iterdir())
    broken = "raise RuntimeError('half an upgrade')\n"
    (entry / "kernels.py").write_text(broken)
    manifest = json.loads((entry / MANIFEST).read_text())
    manifest["files"]["kernels.py"] = hashlib.sha256(broken.encode()).hexdigest()
    (entry / MANIFEST).write_text(json.dumps(manifest))
    rc, out, err = run_triton(capsys, monkeypatch, cache)
    assert rc == 0, err
    assert err == "" and "forward: float32 [4]" in out
    # repaired in place: a later run reads a valid entry with a working module
    assert [p.name for p in cache.iterdir()] == [entry.name]
    files = CodeCache(cache).get(entry.name)
    assert files is not None and "def launch(" in files["kernels.py"]


def test_an_unwritable_cache_warns_once_and_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("triton")
    from util import compile_src

    from ember.runtime import triton_backend

    cache = CodeCache(tmp_path / "ro")
    mkdtemp = tempfile.mkdtemp

    def refuse(*args: Any, **kw: Any) -> str:  # as a read-only directory would
        if kw.get("dir") == cache.root:
            raise PermissionError(13, "Permission denied")
        return mkdtemp(*args, **kw)

    monkeypatch.setattr(tempfile, "mkdtemp", refuse)
    for scale in ("2.0", "3.0"):
        g = compile_src(f"model M {{ def forward(x: f32[4]) {{ return x * {scale} }} }}")
        prog = triton_backend.TritonProgram(g, cache=cache)
        assert Path(prog.py.__file__).is_relative_to(triton_backend._private_root())
    assert capsys.readouterr().err.count("cannot use the kernel cache") == 1


def test_a_file_where_an_entry_should_be(tmp_path: Path) -> None:
    cache = CodeCache(tmp_path)
    key = cache.key("x")
    cache.path(key).write_text("in the way")
    assert cache.get(key) is None
    assert not cache.path(key).exists()  # judged broken and removed
    cache.path(key).write_text("in the way again")
    assert cache.put(key, FILES) == cache.path(key)  # put clears it too
    assert cache.get(key) == FILES


def test_stale_temp_dirs_are_swept(tmp_path: Path) -> None:
    cache = CodeCache(tmp_path)
    old, young = tmp_path / ".tmp-killed", tmp_path / ".tmp-dead-abc-123"
    for d in (old, young):
        d.mkdir()
        (d / "kernels.py").write_text("")
    then = time.time() - STALE_SECONDS - 60
    os.utime(old, (then, then))
    cache.put(cache.key("y"), FILES)
    assert not old.exists()
    assert young.exists()  # may belong to a writer at work


def publish_over(cache: CodeCache, key: str) -> None:
    """What another process does meanwhile: remove the entry, publish a good one."""
    other = CodeCache(cache.root)
    path = cache.path(key)
    if path.is_dir():
        for p in path.iterdir():
            p.unlink()
        path.rmdir()
    other.put(key, FILES)


def test_a_reader_removes_only_the_copy_it_judged_broken(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cache = CodeCache(tmp_path)
    key = cache.key("race")
    cache.put(key, FILES)
    (cache.path(key) / "kernels.py").write_text("truncated")  # sha256 no longer matches
    read = cache_mod._read_entry

    def read_then_lose_the_race(entry: Path, k: str) -> dict[str, str] | None:
        files = read(entry, k)
        publish_over(cache, key)  # between judging and removing
        return files

    monkeypatch.setattr(cache_mod, "_read_entry", read_then_lose_the_race)
    assert cache.get(key) is None
    monkeypatch.undo()
    assert CodeCache(tmp_path).get(key) == FILES
    assert [p.name for p in tmp_path.iterdir()] == [key]


def test_discard_leaves_a_newer_entry(tmp_path: Path) -> None:
    cache = CodeCache(tmp_path)
    key = cache.key("import failed")
    cache.put(key, FILES)
    assert cache.get(key) == FILES
    publish_over(cache, key)
    cache.discard(key)  # judged the old copy broken: the new one stays
    assert CodeCache(tmp_path).get(key) == FILES
    cache.discard(key)  # nothing judged any more
    assert cache.get(key) == FILES
    cache.discard(key)
    assert not cache.path(key).exists()
