"""mixed_precision: the dot products of an f32 graph on 16-bit operands.

`--precision bf16-mixed` (or `f16-mixed`) compiles the model as written, in
f32, then this pass casts the operands of every matmul, conv2d, attention and
attention_grad to bf16 (f16). Those ops accumulate in f32 and return f32
(`ir/shapes.py: accumulator`), so everything else stays f32 as torch's
autocast keeps it: reductions, softmax statistics (an attention's running max
and sum, its lse), normalization, losses, the optimizer update. Parameters and
optimizer state stay f32 master copies: the cast is a node inside the graph,
read where the product needs it. An LSTM's gates are matmuls, so they are
covered; so is every backward product, because the pass runs on the joint
graph after `grad` (the gradient is that of the f32 model, its products then
rounded like the forward's, as autocast's backward does).
"""

from __future__ import annotations

from dataclasses import replace

from ember.ir.dtypes import DType
from ember.ir.graph import Builder, Graph, Node
from ember.ir.ops import Op

from .rewrite import copy_node, map_graph

PRECISIONS = ("f32", "f64", "bf16-mixed", "f16-mixed")
LOW = {"bf16-mixed": DType.BF16, "f16-mixed": DType.F16}

# each dot-product op and how many of its leading operands feed the products
# (attention_grad's q, k, v and do, as in FlashAttention-2; lse and delta stay f32)
DOT_OPERANDS = {Op.MATMUL: 2, Op.CONV2D: 2, Op.ATTENTION: 3, Op.ATTENTION_GRAD: 4}


def low_dtype(precision: str) -> DType | None:
    """The 16-bit type of a mixed precision, None for f32 and f64."""
    return LOW.get(precision)


def mixed_precision(g: Graph, low: DType) -> Graph:
    """g with the f32 operands of its dot-product ops cast to `low` (region
    bodies too); each value is cast once however many products read it."""
    casts: dict[int, int] = {}

    def visit(b: Builder, n: Node, srcs: tuple[int, ...]) -> int:
        if "body" in n.attrs and n.op is not Op.FOREACH:
            n = replace(n, attrs={**n.attrs, "body": mixed_precision(n.attrs["body"], low)})
        if n.op not in DOT_OPERANDS or b.type_of(srcs[0]).dtype is not DType.F32:
            return copy_node(b, n, srcs)
        k = DOT_OPERANDS[n.op]
        cast = tuple(_cast(b, s, low, n, casts) for s in srcs[:k])
        return b.add(n.op, cast + srcs[k:], n.attrs, n.loc)
    return map_graph(g, visit)


def _cast(b: Builder, src: int, low: DType, user: Node, casts: dict[int, int]) -> int:
    if src not in casts:
        casts[src] = b.add(Op.CAST, (src,), {"dtype": low}, user.loc)
    return casts[src]

