"""Writing files so that a user's file is never lost.

Every file Ember writes (outputs, parameters, gradients, generated modules)
goes through `write_atomic`: the bytes go to a temporary file in the target's
own directory (same file system), which is flushed to disk and then renamed
over the target. A full disk, a file-size limit or a kill mid-write leaves the
old file as it was, never a truncated one. `ensure_distinct` refuses, before
anything runs, a command whose output would replace one of its own inputs.
"""

from __future__ import annotations

import os
import stat
import tempfile
from collections.abc import Callable, Sequence
from contextlib import suppress
from functools import lru_cache
from pathlib import Path
from typing import IO, Any

from ember.ir.loc import DSLError


def write_atomic(path: str | Path, write: Callable[[IO[bytes]], Any], what: str) -> None:
    """Write `path` through `write(file)` all at once or not at all.

    A symlink is followed, so its target is replaced and the link kept; the
    new file keeps the old one's permissions (or gets the umask's)."""
    target = Path(path).resolve()
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    except OSError as e:
        raise DSLError(f"cannot write {what} '{path}': {e.strerror or e}") from None
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, _mode(target))
        os.replace(tmp, target)
    except OSError as e:
        _discard(tmp)
        raise DSLError(f"cannot write {what} '{path}': {e.strerror or e}") from None
    except BaseException:  # e.g. Ctrl-C mid-write: no temporary file left behind
        _discard(tmp)
        raise


def _discard(tmp: str) -> None:
    with suppress(OSError):
        os.unlink(tmp)


def _mode(target: Path) -> int:
    try:
        return stat.S_IMODE(target.stat().st_mode)
    except OSError:
        return 0o666 & ~_umask()


@lru_cache(maxsize=1)
def _umask() -> int:
    mask = os.umask(0o022)  # reading the umask means setting it; put it back at once
    os.umask(mask)
    return mask


def ensure_distinct(outputs: Sequence[tuple[str, str | None]],
                    inputs: Sequence[tuple[str, str | None]]) -> None:
    """Refuse outputs that are the same file as an input or as each other.

    Each entry is (option, path). Paths compare after resolving symlinks, and
    existing files also by inode, so `./m.ember`, a link to it and a hard link
    all count as the model file."""
    seen = [(flag, path) for flag, path in inputs if path]
    for flag, path in outputs:
        if not path:
            continue
        for other_flag, other in seen:
            if _same(path, other):
                role = "an input" if (other_flag, other) in inputs else "another output"
                raise DSLError(f"{flag} '{path}' is the same file as {other_flag} '{other}'; "
                               f"refusing to overwrite {role} of this command")
        seen.append((flag, path))


def _same(a: str, b: str) -> bool:
    if Path(a).resolve() == Path(b).resolve():
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist yet
        return False


def printable(text: str, limit: int | None = 200) -> str:
    """`text` safe to echo in a message: control characters as escapes (a file
    name or a value from the command line may hold any), cut to `limit`."""
    out = "".join(ch if ch.isprintable() or ch == " " else repr(ch)[1:-1] for ch in text)
    if limit is not None and len(out) > limit:
        out = f"{out[:limit]}... ({len(out) - limit} more characters)"
    return out
