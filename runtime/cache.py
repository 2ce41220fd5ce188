"""On-disk cache of generated code: one directory per key holding text files and a manifest.

Job: keep generated kernel modules (and anything else small and textual) between runs,
keyed by :meth:`CodeCache.key` over the inputs that determined them plus the Ember and
Triton versions, so a new release of either never serves stale code.

Layout: ``<root>/<key>/`` holds the files and ``manifest.json`` =
``{"format": 1, "key": key, "files": {name: sha256-of-utf8-text}}``.

Invariants:

* An entry directory only ever appears complete: ``put`` writes everything into a
  ``.tmp-*`` directory inside ``root`` (same file system) and renames it into place, which
  is atomic. The manifest is written last.
* Concurrent writers of one key cannot corrupt each other: the first rename wins, a later
  writer finds a valid entry, drops its own copy and returns the winner's path (the
  content is the same, since the key determines it). No ``.tmp-*`` directory outlives a
  ``put`` that returns or raises.
* ``get`` never raises on bad data: unreadable/invalid JSON, a missing file, a wrong key
  or a sha256 mismatch (a truncated file after a crash: renames may reach the disk before
  file data) make the entry a miss, and the broken entry is removed.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
import uuid
from importlib import metadata
from pathlib import Path

MANIFEST = "manifest.json"
FORMAT = 1
_TMP_PREFIX = ".tmp-"
# Keys and file names become path components: no separators, no hidden/relative names.
_SAFE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]*")


def default_root() -> Path:
    """``$EMBER_CACHE_DIR`` if set, else ``~/.cache/ember``."""
    env = os.environ.get("EMBER_CACHE_DIR")
    return Path(env) if env else Path.home() / ".cache" / "ember"


def _versions() -> tuple[str, str]:
    import ember

    # Read from the package metadata: importing triton here would create its
    # standard library before TRITON_INTERPRET is set (see triton_backend).
    try:
        triton_version = metadata.version("triton")
    except metadata.PackageNotFoundError:
        triton_version = "none"
    return str(ember.__version__), triton_version


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class CodeCache:
    """A directory of cache entries, each ``{filename: text}``; see the module docstring."""

    def __init__(self, root: Path | None = None) -> None:
        self.root = Path(root) if root is not None else default_root()

    def key(self, *parts: str) -> str:
        """sha256 hex over ``parts`` and the Ember/Triton versions."""
        digest = hashlib.sha256()
        for part in ("ember-code-cache", *_versions(), *parts):
            data = part.encode("utf-8")
            # Length-prefix each part so ("ab", "c") and ("a", "bc") differ.
            digest.update(len(data).to_bytes(8, "little") + data)
        return digest.hexdigest()

    def path(self, key: str) -> Path:
        """Directory of the entry for ``key`` (it may not exist)."""
        if not _SAFE_NAME.fullmatch(key):
            raise ValueError(f"invalid cache key {key!r}")
        return self.root / key

    def get(self, key: str) -> dict[str, str] | None:
        """The entry's files, or None on a miss (absent, partial or corrupt entry)."""
        entry = self.path(key)
        if not entry.is_dir():
            return None
        files = _read_entry(entry, key)
        if files is None:
            _remove(entry)
        return files

    def put(self, key: str, files: dict[str, str]) -> Path:
        """Store ``files`` under ``key`` atomically and return the entry directory."""
        entry = self.path(key)
        for name in files:
            if name == MANIFEST or not _SAFE_NAME.fullmatch(name):
                raise ValueError(f"invalid file name {name!r} for a cache entry")
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=_TMP_PREFIX, dir=self.root))
        try:
            _write_entry(tmp, key, files)
            self._publish(tmp, entry, key)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        return entry

    def _publish(self, tmp: Path, entry: Path, key: str) -> None:
        """Rename ``tmp`` to ``entry``; if an entry is there already, keep the valid one."""
        for _ in range(5):
            try:
                os.rename(tmp, entry)  # atomic; fails if entry exists and is non-empty
                return
            except OSError:
                if not entry.exists():
                    raise  # not a collision: a real error (permissions, disk full, ...)
            if self.get(key) is not None:
                return  # another writer won with identical content; tmp is dropped
            # get() removed a broken entry: retry the rename.
        raise OSError(f"could not publish cache entry {entry}: it keeps being replaced")


def _write_entry(directory: Path, key: str, files: dict[str, str]) -> None:
    for name, text in files.items():
        # newline="" keeps the text byte-exact, so the hash checks what get() returns.
        (directory / name).write_text(text, encoding="utf-8", newline="")
    manifest = {"format": FORMAT, "key": key,
                "files": {name: _sha256(text) for name, text in files.items()}}
    (directory / MANIFEST).write_text(json.dumps(manifest, indent=1), encoding="utf-8")


def _read_entry(entry: Path, key: str) -> dict[str, str] | None:
    """The verified files of ``entry``, or None if anything about it is off."""
    try:
        manifest = json.loads((entry / MANIFEST).read_text(encoding="utf-8"))
        if manifest.get("format") != FORMAT or manifest.get("key") != key:
            return None
        files: dict[str, str] = {}
        for name, digest in manifest["files"].items():
            if not _SAFE_NAME.fullmatch(name) or name == MANIFEST:
                return None
            with open(entry / name, encoding="utf-8", newline="") as f:
                text = f.read()
            if _sha256(text) != digest:
                return None
            files[name] = text
        return files
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        # ValueError covers JSONDecodeError and UnicodeDecodeError; the others a manifest
        # of the wrong shape (e.g. a list, or "files" missing).
        return None


def _remove(entry: Path) -> None:
    """Delete a broken entry; losing a race with another remover is fine.

    Renaming it away first means a half-deleted directory never sits at the entry path.
    """
    dead = entry.with_name(f"{_TMP_PREFIX}dead-{entry.name}-{uuid.uuid4().hex}")
    try:
        os.rename(entry, dead)
    except OSError:
        return  # already gone (another reader or writer dealt with it)
    shutil.rmtree(dead, ignore_errors=True)
