"""A kernel cache that cannot be used never stops a run, and a broken entry
never poisons later ones.

Through the command line (a subprocess each, so no module survives between
runs in `sys.modules`): EMBER_CACHE_DIR naming a file, and an entry whose
manifest matches but whose module does not import. In process: an unwritable
cache, a file where an entry directory should be, stale temporary directories,
and the races in which another process publishes a good entry while this one
removes a copy it judged broken.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest
from util import MODELS  # tests/util.py

from ember.runtime import cache as cache_mod
from ember.runtime.cache import MANIFEST, STALE_SECONDS, CodeCache

FILES = {"kernels.py": "def launch(*args):\n    return {}\n", "symbols.json": "[]"}


def run_mlp(cache_dir: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "EMBER_CACHE_DIR": str(cache_dir)}
    return subprocess.run([sys.executable, "-m", "ember", "run", str(MODELS / "mlp.ember"),
                           "--dims", "B=2", "--backend", "triton", "--check"],
                          capture_output=True, text=True, timeout=300, env=env)


def test_a_cache_dir_that_is_a_file(tmp_path: Path) -> None:
    (tmp_path / "cache").write_text("not a directory")
    r = run_mlp(tmp_path / "cache")
    assert r.returncode == 0, r.stderr
    assert "check forward:" in r.stdout and "ok" in r.stdout
    assert r.stderr.count("warning: cannot use the kernel cache") == 1, r.stderr
    assert "Traceback" not in r.stderr
    assert (tmp_path / "cache").read_text() == "not a directory"


def test_a_broken_module_behind_a_good_manifest_is_replaced(tmp_path: Path) -> None:
    assert run_mlp(tmp_path).returncode == 0
    (entry,) = [p for p in tmp_path.iterdir() if not p.name.startswith(".")]
    broken = "raise RuntimeError('half an upgrade')\n"
    (entry / "kernels.py").write_text(broken)
    manifest = json.loads((entry / MANIFEST).read_text())
    manifest["files"]["kernels.py"] = hashlib.sha256(broken.encode()).hexdigest()
    (entry / MANIFEST).write_text(json.dumps(manifest))
    for _ in range(2):  # the run after the repair reads the repaired entry
        r = run_mlp(tmp_path)
        assert r.returncode == 0, r.stderr
        assert r.stderr == ""
        assert "def launch(" in (entry / "kernels.py").read_text()
    assert [p.name for p in tmp_path.iterdir()] == [entry.name]


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
