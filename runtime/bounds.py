"""Range checks of data-dependent indices: the message both backends give, and
the launcher's side of the kernels' checks.

An embedding lookup `table[ids]` and an index by a runtime scalar `x[k]` read
at an address that comes from data. The oracle checks the index before it
reads; a generated kernel clamps the index, so its load is always inside the
buffer, and records the smallest and largest index it saw in a small int64
buffer (one [min, max] pair per site, by atomics). The launcher reads that
buffer once, after its last kernel, and raises the oracle's error.
"""

from __future__ import annotations

from typing import Any

from ember.ir.loc import DSLError, Loc

I64_MAX = 2**63 - 1
I64_MIN = -I64_MAX  # not -2**63: as a kernel literal it would not fit int64


def out_of_range(kind: str, rows: int, lo: int, hi: int) -> str:
    """The error text for indices in [lo, hi] that should lie in [0, rows)."""
    if kind == "gather":
        return f"embedding ids must be in [0, {rows}), found values in [{lo}, {hi}]"
    return f"index must be in [0, {rows}), found {lo if lo < 0 else hi}"


def new_bounds(sites: int, device: Any) -> Any:
    """The [min, max] pairs, empty: each min above every index, each max below."""
    import torch
    return torch.tensor([I64_MAX, I64_MIN] * sites, dtype=torch.int64, device=device)


def check_bounds(bounds: Any, sites: tuple[tuple[int, str, Loc], ...]) -> None:
    """Raise the first site's error whose seen indices leave [0, rows)."""
    seen = bounds.tolist()  # one device-to-host copy per launch
    for k, (rows, kind, loc) in enumerate(sites):
        lo, hi = seen[2 * k], seen[2 * k + 1]
        if lo <= hi and (lo < 0 or hi >= rows):  # lo > hi: the site saw no index
            raise DSLError(out_of_range(kind, rows, lo, hi), loc)
