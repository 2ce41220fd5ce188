"""`--emit ast`: an indented text view of the AST, one node a line."""

from __future__ import annotations

from dataclasses import fields, is_dataclass
from typing import Any

from . import ast


def format_ast(node: Any, indent: int = 0) -> str:
    pad = "  " * indent
    if not is_dataclass(node):
        return pad + repr(node)
    scalars, children = [], []
    for f in fields(node):
        if f.name in ("loc", "source", "file"):
            continue
        v = getattr(node, f.name)
        if _is_tree(v):
            children.append((f.name, v))
        else:
            scalars.append(f"{f.name}={v!r}")
    loc = getattr(node, "loc", None)
    where = f"  @{loc.line}:{loc.col}" if isinstance(loc, ast.Loc) else ""
    lines = [f"{pad}{type(node).__name__}({', '.join(scalars)}){where}"]
    for name, v in children:
        items = v if isinstance(v, tuple) else (v,)
        lines.append(f"{pad}  {name}:")
        for x in items:
            if isinstance(x, tuple):  # a keyword argument: (name, value)
                lines.append(f"{pad}    {x[0]}=")
                x = x[1]
            lines.append(format_ast(x, indent + 2))
    return "\n".join(lines)


def _is_tree(v: Any) -> bool:
    if isinstance(v, tuple):
        return any(is_dataclass(x) or isinstance(x, tuple) for x in v)
    return is_dataclass(v)

