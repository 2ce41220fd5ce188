"""Bounds checks for the only data-dependent addresses in generated kernels.

A gather (`table[ids]`) and an index by a runtime scalar (`x[k]`) are the two
places where a kernel computes an address from data; every other offset is
index arithmetic on tile positions and dims. Each such index is clamped into
[0, rows) before it becomes an address, so no load ever leaves its buffer, and
its smallest and largest values are folded into one [min, max] slot of the
launch's `id_bounds` buffer (see runtime/bounds.py), which the launcher checks
after the last kernel and turns into the oracle's located error.

Why in the kernel rather than on the host before launch: ids are often
computed in a kernel (`pos[arange(T)]`, `table[argmax(x)]`, a loop counter
past the end of an axis), so a host check of the graph's inputs would miss
them; the kernel sees every index it uses. Why one check after the launch
rather than after each kernel: clamped indices keep every later kernel in
bounds too, and one device-to-host copy per launch costs nothing measurable.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from ember.ir import dims
from ember.ir.dims import Dim
from ember.ir.dtypes import DType
from ember.ir.loc import Loc
from ember.runtime.bounds import I64_MAX, I64_MIN

from .ix import Ix, dim_text, wrap

if TYPE_CHECKING:
    from .writer import KernelWriter

BOUNDS = "id_bounds"  # the launcher's variable; kernels take it as id_bounds_ptr
HEADER = ("from ember.ir.loc import Loc\n"
          "from ember.runtime.bounds import check_bounds, new_bounds")


@dataclass(frozen=True)
class Site:
    """One checked index: `kind` names the message, `rows` the extent."""

    kind: str   # "gather" or "index"
    rows: Dim
    loc: Loc


def checked_index(w: KernelWriter, node: int, kind: str, at: Ix, rows: Dim) -> Ix:
    """`at` clamped into [0, rows), after recording its range in a new slot."""
    ptr = f"{BOUNDS}_ptr"
    # The kernel numbers its own sites from 0 and is handed the launch's buffer
    # at its first site's slot, so its text never names a global slot and
    # kernels that differ only in that still share one source.
    var, shape, _ = w.extras.get(ptr, (f"{BOUNDS}[{2 * len(w.sites)}:]", (0,), DType.I64))
    slot = shape[0] // 2
    w.extras[ptr] = (var, (2 * slot + 2,), DType.I64)  # the bytes this kernel touches
    w.sites.append(Site(kind, rows, w.g.nodes[node].loc))
    lo, hi = _range(w, at)
    w.line(f"tl.atomic_min({ptr} + {2 * slot}, {lo})", node)
    w.line(f"tl.atomic_max({ptr} + {2 * slot + 1}, {hi})", node)
    top = wrap(dim_text(rows))
    return w.let(w.fresh(f"{kind}{node}"), f"tl.maximum(tl.minimum({at}, {top} - 1), 0)",
                 at.axes, node)


def guard_rows(w: KernelWriter, row: Ix, rows: Dim) -> str:
    """The mask a load at a clamped row needs: a tensor whose extent comes from
    a dim may be empty, and then even row 0 is outside it (the clamped row is
    below `rows` exactly when `rows` > 0)."""
    if not dims.symbols((rows,)):
        return w.extra_mask
    # (a 0-d comparison goes through tl.where: the interpreter rejects it in `&`)
    below = f"{row} < {wrap(dim_text(rows))}"
    guard = f"({below})" if row.axes else f"tl.where({below}, True, False)"
    return f"{w.extra_mask} & {guard}" if w.extra_mask else guard


def _range(w: KernelWriter, at: Ix) -> tuple[str, str]:
    """The smallest and largest of `at` over the lanes that use it, as int64."""
    v = f"tl.cast({at}, tl.int64)"
    if not at.axes:
        return v, v
    mask = w.mask_for(at.axes)
    if not mask:
        return f"tl.min({v})", f"tl.max({v})"
    return (f"tl.min(tl.where({mask}, {v}, {I64_MAX}))",
            f"tl.max(tl.where({mask}, {v}, {I64_MIN}))")


def launcher_lines(sites: list[Site], pad: str) -> tuple[list[str], list[str]]:
    """The launcher's lines before the first kernel and after the last."""
    if not sites:
        return [], []
    table = ", ".join(f"({dim_text(s.rows)}, {s.kind!r}, {s.loc!r})" for s in sites)
    return ([f"{pad}{BOUNDS} = new_bounds({len(sites)}, pool.device)"],
            [f"{pad}check_bounds({BOUNDS}, ({table},))"])
