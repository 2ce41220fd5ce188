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
* ``get`` never raises on bad data: unreadable/invalid JSON, a missing file, a wrong key,
  a sha256 mismatch (a truncated file after a crash: renames may reach the disk before
  file data) or a plain file where the entry directory should be make the entry a miss,
  and the broken entry is removed.
* Removal takes away only the copy that was judged broken, never whatever sits at the
  path by then: another process may have published a good entry there in the meantime
  (see ``_remove``). ``discard`` does the same for an entry whose files passed the
  manifest but that its user found broken (a module that does not import).
* ``.tmp-*`` directories older than ``STALE_SECONDS`` (left by a killed writer) are swept
  by the next ``put``; younger ones may belong to a writer still at work.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
import time
import uuid
from contextlib import suppress
from importlib import metadata
from pathlib import Path

MANIFEST = "manifest.json"
FORMAT = 1
_TMP_PREFIX = ".tmp-"
STALE_SECONDS = 3600  # far longer than any put takes
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
        self._read: dict[str, tuple[int, int, int]] = {}  # key -> the copy get read

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
        ident = _identity(entry)
        if ident is None:
            return None
        files = _read_entry(entry, key) if entry.is_dir() else None
        if files is None:
            _remove(entry, ident)
        else:
            self._read[key] = ident
        return files

    def discard(self, key: str) -> None:
        """Remove the entry that ``get`` returned for ``key``, if it is still there."""
        ident = self._read.pop(key, None)
        if ident is not None:
            _remove(self.path(key), ident)

    def put(self, key: str, files: dict[str, str]) -> Path:
        """Store ``files`` under ``key`` atomically and return the entry directory."""
        entry = self.path(key)
        for name in files:
            if name == MANIFEST or not _SAFE_NAME.fullmatch(name):
                raise ValueError(f"invalid file name {name!r} for a cache entry")
        self.root.mkdir(parents=True, exist_ok=True)
        _sweep(self.root)
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
                if _identity(entry) is None:
                    raise  # not a collision: a real error (permissions, disk full, ...)
            if self.get(key) is not None:
                return  # another writer won with identical content; tmp is dropped
            # get() removed a broken entry (or a file in its place): retry the rename.
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


def _identity(path: Path) -> tuple[int, int, int] | None:
    """What sits at path now, or None if nothing does: (device, inode, mtime).

    The mtime tells apart a new directory that reuses a freed inode number, and a
    rename leaves it alone."""
    try:
        st = path.lstat()
    except OSError:
        return None
    return st.st_dev, st.st_ino, st.st_mtime_ns


def _remove(entry: Path, ident: tuple[int, int, int]) -> None:
    """Delete the broken copy ``ident`` of an entry; losing a race is fine.

    It is renamed away first, so a half-deleted directory never sits at the entry
    path. If what was renamed is not the broken copy (another process removed that one
    and published a new entry in between), the new entry is put back; should yet
    another have been published meanwhile, this duplicate of it is dropped.
    """
    dead = entry.with_name(f"{_TMP_PREFIX}dead-{entry.name}-{uuid.uuid4().hex}")
    try:
        os.rename(entry, dead)
    except OSError:
        return  # already gone (another reader or writer dealt with it)
    if _identity(dead) != ident:
        with suppress(OSError):
            os.rename(dead, entry)
            return
    _delete(dead)


def _delete(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with suppress(OSError):
            path.unlink()


def _sweep(root: Path) -> None:
    """Delete temporary directories that a killed writer or remover left behind."""
    now = time.time()
    with suppress(OSError):
        for p in root.iterdir():
            with suppress(OSError):
                if p.name.startswith(_TMP_PREFIX) and now - p.lstat().st_mtime > STALE_SECONDS:
                    _delete(p)
