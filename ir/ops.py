"""The closed set of IR primitives, grouped by kind.

Every builtin of the language is either one of these primitives or a composite
that lowering expands into them (see `lang/builtins.py`). Each pass gives the
primitives their meaning through one table keyed by `Op`: `shape_rules`
(ir/shapes.py) and `eval_rules` (runtime/oracle.py), which tests check cover
every Op; `triton_rules` (codegen/rules.py) covers the elementwise ops, the
view rules of codegen/writer.py the movement ops and leaves, and the kernel
templates the rest. The autodiff issue adds `vjp_rules`.
"""

from __future__ import annotations

from enum import Enum


class Op(Enum):
    # leaves: graph inputs, named parameters, scalar constants, generated tensors
    INPUT = "input"
    PARAM = "param"
    CONST = "const"
    FULL = "full"          # a tensor filled with one value; shape may be symbolic
    IOTA = "iota"          # index along one axis (i32); builds masks and one-hots
    RAND = "rand"          # uniform [0, 1) keyed by (seed, stream, loop steps, flat index)
    DIM = "dim"            # the runtime value of a (symbolic) dimension, as an i32 scalar

    # elementwise unary
    NEG = "neg"
    EXP = "exp"
    LOG = "log"
    SQRT = "sqrt"
    RSQRT = "rsqrt"
    ABS = "abs"
    RELU = "relu"
    SIGMOID = "sigmoid"
    TANH = "tanh"
    ERF = "erf"
    CAST = "cast"
    NOT = "not"
    STOP_GRAD = "stop_grad"  # the identity, whose derivative is zero

    # elementwise binary (NumPy broadcasting)
    ADD = "add"
    SUB = "sub"
    MUL = "mul"
    DIV = "div"
    POW = "pow"
    MAXIMUM = "maximum"
    MINIMUM = "minimum"
    LT = "lt"
    LE = "le"
    GT = "gt"
    GE = "ge"
    EQ = "eq"
    NE = "ne"
    AND = "and"
    OR = "or"

    # elementwise ternary
    WHERE = "where"

    # reductions over `axes`, with `keepdims`
    SUM = "sum"
    MEAN = "mean"
    MAX = "max"
    MIN = "min"
    ARGMAX = "argmax"

    # movement: no arithmetic, only index remapping
    RESHAPE = "reshape"
    PERMUTE = "permute"
    EXPAND = "expand"
    SLICE = "slice"
    CONCAT = "concat"
    INDEX = "index"        # x[..., i, ...] with a runtime scalar i (drops the axis)
    GATHER = "gather"      # table[ids]: embedding lookup along axis 0
    PAD = "pad"            # zeros around (lows/highs, negative crops) and between (interiors)
    FLIP = "flip"          # reverse the order along `axes`

    # compute
    MATMUL = "matmul"
    CONV2D = "conv2d"
    MAX_POOL2D = "max_pool2d"
    AVG_POOL2D = "avg_pool2d"
    MAX_POOL2D_GRAD = "max_pool2d_grad"  # (x, dy) -> dx: dy routed to each window's first max
    # softmax attention, recognized by passes/recognize.py. srcs (q, k, v,
    # captured...) with q [..., T, DK], k [..., TK, DK], v [..., TK, D]; results
    # (o, lse) read with GET. Its region `body` (FlexAttention's score_mod) maps
    # the raw scores q @ k^T and the captured operands to the logits the
    # softmax normalizes; `causal` says key tiles past the diagonal vanish.
    ATTENTION = "attention"
    # its backward: srcs (q, k, v, do, lse, delta = rowsum(do * o), captured...),
    # results (dq, dk, dv); `body` maps (scores, d logits, captured...) to
    # (logits, d scores), the score_mod and its derivative.
    ATTENTION_GRAD = "attention_grad"

    # the same elementwise region applied to `groups` groups of `arity`
    # same-shaped tensors (a multi-tensor kernel: the optimizer's update of
    # every parameter in one launch). srcs: group-major operands, then shared
    # 0-d scalars; `body` maps 0-d (operands..., scalars...) to 0-d results;
    # the node yields, group by group, each result at the group's shape; with
    # reduce=True it yields instead each result summed over every element of
    # every group, 0-d (a global gradient norm's sum of squares). `donate`
    # pairs (result j, operand k) say a kernel may store result j over operand
    # k's buffer when nothing reads that operand later (an update in place).
    FOREACH = "foreach"

    # structure: regions holding a body Graph; results are read with GET.
    # LOOP is a scan: srcs (carries, xs, captured); the body takes (t, carries,
    # x_t, captured) and returns (carries, y_t); the node yields (carries, ys)
    # with each ys stacked as [length, ...]. With reverse=True, t runs from
    # length - 1 down to 0 and the body still sees the forward index t.
    CALL = "call"
    LOOP = "loop"
    GET = "get"


LEAF = frozenset({Op.INPUT, Op.PARAM, Op.CONST, Op.FULL, Op.IOTA, Op.RAND, Op.DIM})
UNARY = frozenset({Op.NEG, Op.EXP, Op.LOG, Op.SQRT, Op.RSQRT, Op.ABS, Op.RELU,
                   Op.SIGMOID, Op.TANH, Op.ERF, Op.CAST, Op.NOT, Op.STOP_GRAD})
COMPARE = frozenset({Op.LT, Op.LE, Op.GT, Op.GE, Op.EQ, Op.NE})
LOGICAL = frozenset({Op.AND, Op.OR})
BINARY = frozenset({Op.ADD, Op.SUB, Op.MUL, Op.DIV, Op.POW, Op.MAXIMUM,
                    Op.MINIMUM}) | COMPARE | LOGICAL
ELEMENTWISE = UNARY | BINARY | {Op.WHERE}
REDUCE = frozenset({Op.SUM, Op.MEAN, Op.MAX, Op.MIN, Op.ARGMAX})
MOVEMENT = frozenset({Op.RESHAPE, Op.PERMUTE, Op.EXPAND, Op.SLICE, Op.CONCAT,
                      Op.INDEX, Op.GATHER, Op.PAD, Op.FLIP})
COMPUTE = frozenset({Op.MATMUL, Op.CONV2D, Op.MAX_POOL2D, Op.AVG_POOL2D, Op.MAX_POOL2D_GRAD})
ATTENTION_OPS = frozenset({Op.ATTENTION, Op.ATTENTION_GRAD})
