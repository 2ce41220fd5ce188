"""The on-disk code cache: hits, misses, corrupt entries as misses, keys, atomic writes."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

import ember
from ember.runtime.cache import MANIFEST, CodeCache

FILES = {
    "kernels.py": "import triton\n\n@triton.jit\ndef k(X):\n    pass\n",
    "meta.json": '{"grid": [4, 1, 1]}\r\n',  # \r\n must survive byte-exact
}


@pytest.fixture
def cache(tmp_path: Path) -> CodeCache:
    return CodeCache(tmp_path / "cache")


def leftovers(cache: CodeCache) -> list[str]:
    return sorted(p.name for p in cache.root.iterdir() if p.name.startswith("."))


def test_hit_after_put(cache: CodeCache) -> None:
    key = cache.key("model.ember", "B=2,T=8")
    entry = cache.put(key, FILES)
    assert entry == cache.path(key) and (entry / MANIFEST).is_file()
    assert cache.get(key) == FILES
    assert CodeCache(cache.root).get(key) == FILES  # a fresh instance reads it from disk


def test_miss_on_unknown_key(cache: CodeCache) -> None:
    assert cache.get(cache.key("never stored")) is None


@pytest.mark.parametrize("manifest", ["{not json", "[]", '{"format": 1}', ""])
def test_corrupt_manifest_is_a_miss_and_removed(cache: CodeCache, manifest: str) -> None:
    key = cache.key("x")
    entry = cache.put(key, FILES)
    (entry / MANIFEST).write_text(manifest)
    assert cache.get(key) is None
    assert not entry.exists()
    assert leftovers(cache) == []


def test_truncated_file_is_a_miss(cache: CodeCache) -> None:
    key = cache.key("x")
    entry = cache.put(key, FILES)
    text = (entry / "kernels.py").read_text()
    (entry / "kernels.py").write_text(text[: len(text) // 2])
    assert cache.get(key) is None
    assert not entry.exists()
    cache.put(key, FILES)  # the slot is usable again
    assert cache.get(key) == FILES


def test_missing_file_and_missing_manifest_are_misses(cache: CodeCache) -> None:
    key = cache.key("a")
    (cache.put(key, FILES) / "meta.json").unlink()
    assert cache.get(key) is None
    key = cache.key("b")
    (cache.put(key, FILES) / MANIFEST).unlink()
    assert cache.get(key) is None


def test_manifest_for_another_key_is_a_miss(cache: CodeCache) -> None:
    k1, k2 = cache.key("1"), cache.key("2")
    cache.put(k1, FILES)
    cache.path(k1).rename(cache.path(k2))
    assert cache.get(k2) is None


def test_key_changes_when_any_part_changes(
    cache: CodeCache, monkeypatch: pytest.MonkeyPatch
) -> None:
    base = cache.key("src", "dims", "opts")
    assert base == cache.key("src", "dims", "opts")
    assert len({base, cache.key("src2", "dims", "opts"), cache.key("src", "dims2", "opts"),
                cache.key("src", "dims", "opts2"), cache.key("src", "dims")}) == 5
    assert cache.key("ab", "c") != cache.key("a", "bc")
    monkeypatch.setattr(ember, "__version__", "999.0")
    assert cache.key("src", "dims", "opts") != base


def test_atomic_put_leaves_no_temp_dirs(cache: CodeCache) -> None:
    key = cache.key("x")
    cache.put(key, FILES)
    cache.put(key, FILES)  # an existing valid entry: the second copy is dropped
    assert [p.name for p in cache.root.iterdir()] == [key]
    assert sorted(p.name for p in cache.path(key).iterdir()) == sorted([*FILES, MANIFEST])


def test_failed_put_leaves_no_temp_dirs(cache: CodeCache) -> None:
    with pytest.raises(ValueError):
        cache.put(cache.key("x"), {"../escape.py": ""})
    with pytest.raises(ValueError):
        cache.put(cache.key("x"), {MANIFEST: "{}"})
    with pytest.raises(TypeError):
        cache.put(cache.key("x"), {"bad.py": b"bytes are not text"})  # type: ignore[dict-item]
    assert list(cache.root.iterdir()) == []


def test_concurrent_writers_of_one_key(cache: CodeCache) -> None:
    key = cache.key("race")
    with ThreadPoolExecutor(8) as pool:
        paths = list(pool.map(lambda _: cache.put(key, FILES), range(32)))
    assert set(paths) == {cache.path(key)}
    assert cache.get(key) == FILES
    assert leftovers(cache) == []
    manifest = json.loads((cache.path(key) / MANIFEST).read_text())
    assert set(manifest["files"]) == set(FILES)


def test_default_root_from_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EMBER_CACHE_DIR", str(tmp_path / "env"))
    assert CodeCache().root == tmp_path / "env"
    monkeypatch.delenv("EMBER_CACHE_DIR")
    assert CodeCache().root == Path.home() / ".cache" / "ember"
