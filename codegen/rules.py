"""triton_rules: each elementwise primitive as a Triton expression template.

The templates take the operands' expressions as {0}, {1}, {2}. `tanh` and `pow`
call small helpers that every generated module carries (see PRELUDE): Triton
has no tl.tanh, libdevice does not run in the interpreter, and the naive
exp-based tanh returns NaN near -45.
"""

from __future__ import annotations

from ember.ir.dtypes import DType
from ember.ir.ops import Op

TL_DTYPE = {DType.F32: "tl.float32", DType.F64: "tl.float64", DType.BF16: "tl.bfloat16",
            DType.F16: "tl.float16", DType.I32: "tl.int32", DType.I64: "tl.int64",
            DType.BOOL: "tl.int1"}
PTR_DTYPE = {DType.F32: "*fp32", DType.F64: "*fp64", DType.BF16: "*bf16", DType.F16: "*fp16",
             DType.I32: "*i32", DType.I64: "*i64", DType.BOOL: "*i1"}

NAN = "propagate_nan=tl.PropagateNan.ALL"  # NaN wins, as in NumPy and torch

triton_rules: dict[Op, str] = {
    Op.NEG: "-{0}", Op.EXP: "tl.exp({0})", Op.LOG: "tl.log({0})", Op.SQRT: "tl.sqrt({0})",
    Op.RSQRT: "tl.rsqrt({0})", Op.ABS: "tl.abs({0})", Op.RELU: f"tl.maximum({{0}}, 0.0, {NAN})",
    Op.SIGMOID: "tl.sigmoid({0})", Op.TANH: "_tanh({0})", Op.ERF: "tl.erf({0})",
    Op.NOT: "{0} == 0", Op.STOP_GRAD: "{0}",
    Op.ADD: "{0} + {1}", Op.SUB: "{0} - {1}", Op.MUL: "{0} * {1}", Op.DIV: "{0} / {1}",
    Op.POW: "_pow({0}, {1})", Op.MAXIMUM: f"tl.maximum({{0}}, {{1}}, {NAN})",
    Op.MINIMUM: f"tl.minimum({{0}}, {{1}}, {NAN})", Op.LT: "{0} < {1}", Op.LE: "{0} <= {1}",
    Op.GT: "{0} > {1}", Op.GE: "{0} >= {1}", Op.EQ: "{0} == {1}", Op.NE: "{0} != {1}",
    Op.AND: "{0} & {1}", Op.OR: "{0} | {1}", Op.WHERE: "tl.where({0}, {1}, {2})",
}

PRELUDE = '''
@triton.jit
def _tanh(x):
    # tanh(|x|) = (1 - e) / (1 + e) with e = exp(-2|x|) never overflows; below
    # 0.3, where 1 - e loses bits to cancellation, the odd Taylor series (through
    # x^15: remainder < 3e-12 relative) keeps full precision.
    a = tl.abs(x)
    e = tl.exp(-2.0 * a)
    big = (1.0 - e) / (1.0 + e)
    a2 = a * a
    small = a * (1.0 + a2 * (-1.0 / 3.0 + a2 * (2.0 / 15.0 + a2 * (-17.0 / 315.0 + a2 * (
        62.0 / 2835.0 + a2 * (-1382.0 / 155925.0 + a2 * (21844.0 / 6081075.0 + a2 * (
            -929569.0 / 638512875.0))))))))
    t = tl.where(a < 0.3, small, big)
    return tl.where(x < 0, -t, t)


@triton.jit
def _pow(x, y):
    # x ** y for any sign of x: |x| ** y, negated for odd integer y, NaN for a
    # negative base with a fractional exponent; 0 ** 0 == 1 as in NumPy.
    # (nested where rather than `&`, which the interpreter rejects on scalars)
    r = tl.exp(y * tl.log(tl.abs(x)))
    frac = y != tl.floor(y)
    odd = (y - 2.0 * tl.floor(y * 0.5)) == 1.0
    r = tl.where(x < 0, tl.where(frac, float("nan"), tl.where(odd, -r, r)), r)
    return tl.where(y == 0, 1.0, r)
'''
