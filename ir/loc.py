"""Source locations and the one user-facing error type.

Every AST node and every IR node carries a `Loc`, so an error found in any pass
(shape inference, fusion, codegen) points at the DSL text that caused it.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass


@dataclass(frozen=True)
class Loc:
    """A span in a source file: 1-based line and column, end column exclusive."""

    file: str
    line: int
    col: int
    end_col: int = 0
    source_line: str = ""

    @property
    def known(self) -> bool:
        """Whether this points into a source file (UNKNOWN and file-less locs do not)."""
        return self.line > 0

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.col}"


UNKNOWN = Loc("<unknown>", 0, 0)


class DSLError(Exception):
    """A located, user-facing error: says what was expected and what was found."""

    def __init__(self, message: str, loc: Loc = UNKNOWN, note: str = ""):
        super().__init__(message)
        self.message = message
        self.loc = loc
        self.note = note

    def render(self) -> str:
        """`file:line:col: error: msg`, the source line, a caret under the span;
        just `error: msg` for an error with no source location (a missing file)."""
        where = f"{self.loc}: " if self.loc.known else ""
        lines = [f"{where}error: {self.message}"]
        if self.loc.known and self.loc.source_line:
            gutter = f"{self.loc.line:>5} | "
            lines.append(gutter + self.loc.source_line)
            width = max(1, self.loc.end_col - self.loc.col) if self.loc.end_col else 1
            lines.append(" " * (len(gutter) - 2) + "| " + " " * (self.loc.col - 1) + "^" * width)
        if self.note:
            lines.append(f"note: {self.note}")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.render()


@contextmanager
def deep_recursion(too_deep: str) -> Iterator[None]:
    """Room for recursive walks over long chains (a 500-term sum is one
    chain of 500 nodes); past that, a DSLError saying `too_deep`, never a
    traceback."""
    old = sys.getrecursionlimit()
    sys.setrecursionlimit(max(old, 50_000))
    try:
        yield
    except RecursionError:
        raise DSLError(too_deep) from None
    finally:
        sys.setrecursionlimit(old)
