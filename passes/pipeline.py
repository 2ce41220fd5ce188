"""The optimization pipeline: a list of pure passes, read top to bottom."""

from __future__ import annotations

from collections.abc import Callable

from ember.ir.graph import Graph
from ember.ir.verify import verify

from .cleanup import cse, dce
from .hoist import hoist
from .inline import inline
from .merge import merge_projections
from .precision import low_dtype, mixed_precision
from .recognize import recognize
from .shapes import infer_shapes
from .simplify import fold_constants, simplify
from .sums import canonical_sums

Pass = Callable[[Graph], Graph]

PIPELINE: list[tuple[str, Pass]] = [
    ("inline", inline),                 # splice CALL regions: one flat graph per entry
    ("infer_shapes", infer_shapes),     # re-derive every type from the shape rules
    ("fold_constants", fold_constants), # scalar constant arithmetic at compile time
    ("simplify", simplify),             # x*1, x+0, reshape/permute chains, ...
    ("canonical_sums", canonical_sums), # mm + b + mm + b -> (mm + mm) + b + b
    ("recognize", recognize),           # softmax attention -> one attention op
    ("hoist", hoist),                   # a scan's x[:, t] @ w -> one GEMM before the loop
    ("cse", cse),                       # one node per distinct computation
    ("merge_projections", merge_projections),  # x@wq, x@wk, x@wv -> x@[wq wk wv]
    ("dce", dce),                       # drop what no output needs
]


PASS_NAMES = tuple(name for name, _ in PIPELINE)


def optimize(g: Graph, check: bool = False, until: str | None = None) -> Graph:
    """Run the pipeline (through the pass named `until`, if given); with
    check=True verify the IR after every pass."""
    for name, run in PIPELINE:
        g = run(g)
        if check:
            verify(g)
        if name == until:
            break
    return g


def apply_precision(g: Graph, precision: str) -> Graph:
    """The last step of compiling, after the forward pipeline and `grad`:
    `--precision bf16-mixed|f16-mixed` runs the dot products on 16-bit operands
    (passes/precision.py); f32 and f64 leave g as it is."""
    low = low_dtype(precision)
    return g if low is None else mixed_precision(g, low)
