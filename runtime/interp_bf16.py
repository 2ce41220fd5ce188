"""bfloat16 in Triton's CPU interpreter, made to mean what it means on a GPU.

The interpreter (triton 3.9) holds a bf16 tensor as its uint16 bit patterns.
Two of its rules then disagree with the compiled code: `tl.dot` multiplies
the bit patterns as integers, and `x.to(tl.bfloat16)` from fp32 truncates
where the GPU's `cvt.rn.bf16.f32` rounds to nearest even. `patch()` replaces
those two rules of the interpreter's builder, and nothing else: a dot reads
bf16 operands as the float32 values they hold (their products are exact in
float32, as on a tensor core), and fp32 -> bf16 rounds as `ir/dtypes.round_bf16`
does. It runs only when kernels are interpreted (no GPU).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ember.ir.dtypes import round_bf16


def patch() -> None:
    """Install the two bf16 rules on the interpreter's builder (idempotent)."""
    import triton.language as tl
    from triton.runtime import interpreter

    cls = interpreter.InterpreterBuilder
    if getattr(cls, "_ember_bf16", False):
        return
    dot, cast = cls.create_dot, cls.cast_impl
    handle = interpreter.TensorHandle

    def as_f32(h: Any) -> Any:
        if h.dtype.scalar != tl.bfloat16:
            return h
        bits = h.data.astype(np.uint32) << 16
        return handle(bits.view(np.float32), tl.float32)

    def create_dot(self: Any, a: Any, b: Any, d: Any, *args: Any) -> Any:
        return dot(self, as_f32(a), as_f32(b), d, *args)

    def cast_impl(self: Any, src: Any, dst_type: Any) -> Any:
        if src.dtype.scalar == tl.float32 and dst_type.scalar == tl.bfloat16:
            bits = round_bf16(src.data).view(np.uint32) >> 16
            return handle(bits.astype(np.uint16), tl.bfloat16)
        return cast(self, src, dst_type)

    cls.create_dot, cls.cast_impl, cls._ember_bf16 = create_dot, cast_impl, True
