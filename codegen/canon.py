"""Canonical kernel text, so that kernels computing the same thing are emitted once.

A kernel written for one launch site names things after that site: locals after
IR node numbers (`add22`, `red9`), seeds after random streams
(`seed_blocks_0_drop`), loop counters after the DSL loop variable, and each line
carries a `# op @ model.ember:12` comment. The buffers already have positional
names (`in0_ptr`, `out0_ptr`, see module.py). Here the code is split from its
comments and the remaining site-specific names are renamed by position, so two
sites whose code then reads the same share one kernel; their comments are
merged line by line (`# matmul @ transformer.ember:27, 28, 29`).
"""

from __future__ import annotations

import re

from ember.ir.ops import Op

# Locals the writer and templates name after an IR node: `{op}{node}` (and a
# second one `{op}{node}_1`) and the reduction template's `red{node}`, `nan{node}`.
NODE_PREFIXES = sorted({op.value for op in Op} | {"red", "nan"}, key=len, reverse=True)
NODE_LOCAL = re.compile(rf"({'|'.join(NODE_PREFIXES)})(\d+)(_\d+)?")
IDENT = re.compile(r"(?<![\w.])[A-Za-z_]\w*")
SITE = re.compile(r"(.*) @ (\S+):(\d+)")
COMMENT = "  # "


def split(lines: list[str]) -> tuple[list[str], list[str]]:
    """Each line's code and its trailing comment ('' when it has none)."""
    pairs = [line.partition(COMMENT) for line in lines]
    return [code for code, _, _ in pairs], [comment for _, _, comment in pairs]


def renames(code: list[str], scalars: dict[str, str]) -> dict[str, str]:
    """New names for node-numbered locals (renumbered in order of first use, so
    `red9`, `nan9` become `red0`, `nan0`) and scalar arguments (`seed0`,
    `step0`). Every identifier of a renamed form is renamed, one to one, so
    the new names cannot meet an old one."""
    order: dict[str, int] = {}
    out: dict[str, str] = {}
    for name in IDENT.findall("\n".join(code)):
        m = NODE_LOCAL.fullmatch(name)
        if m:
            number = order.setdefault(m[2], len(order))
            out[name] = f"{m[1]}{number}{m[3] or ''}"
    seeds = [s for s, expr in scalars.items() if expr.startswith("stream_seed(")]
    steps = [s for s in scalars if s not in seeds]
    out.update({s: f"seed{k}" for k, s in enumerate(seeds)})
    out.update({s: f"step{k}" for k, s in enumerate(steps)})
    return out


def rename(code: list[str], names: dict[str, str]) -> list[str]:
    """Replace whole identifiers (never attributes such as `tl.max`)."""
    return [IDENT.sub(lambda m: names.get(m[0], m[0]), line) for line in code]


def merge(comments: list[str]) -> str:
    """One comment for a line from its comments at every site: the common one,
    or `op @ file:12, 19` when the sites differ only in the line number."""
    distinct = list(dict.fromkeys(comments))
    if len(distinct) == 1:
        return distinct[0]
    sites = [SITE.fullmatch(c) for c in distinct]
    if all(sites) and len({(s[1], s[2]) for s in sites if s}) == 1:
        first = sites[0]
        assert first is not None
        numbers = sorted({int(s[3]) for s in sites if s})
        return f"{first[1]} @ {first[2]}:{', '.join(map(str, numbers))}"
    return "; ".join(c for c in distinct if c)


def join(code: str, comment: str) -> str:
    return code + COMMENT + comment if comment else code
