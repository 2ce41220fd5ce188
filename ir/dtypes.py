"""Element types: the closed set of dtypes a tensor in the IR may have.

bf16 and f16 are storage types. Ops on them compute in float32 and round the
result to the stored type, as PyTorch's CPU kernels do. NumPy has float16 but
no bfloat16, so a bf16 array is a float32 array whose values are all
bf16-representable (`round_to`): the values are exact, the storage is wider.
"""

from __future__ import annotations

from enum import Enum
from typing import Any

import numpy as np


class DType(Enum):
    F32 = "f32"
    F64 = "f64"
    BF16 = "bf16"
    F16 = "f16"
    I32 = "i32"
    I64 = "i64"
    BOOL = "bool"

    @property
    def np(self) -> np.dtype:
        """The NumPy dtype that holds this type's values (float32 for bf16)."""
        return np.dtype(_NUMPY[self])

    @property
    def is_float(self) -> bool:
        return self in (DType.F32, DType.F64, DType.BF16, DType.F16)

    @property
    def is_low(self) -> bool:
        """A 16-bit float: computed in float32, rounded to storage after each op."""
        return self in (DType.BF16, DType.F16)

    @property
    def is_int(self) -> bool:
        return self in (DType.I32, DType.I64)

    @property
    def itemsize(self) -> int:
        """Bytes per element on the device (2 for bf16, whose NumPy holder is wider)."""
        return 2 if self.is_low else self.np.itemsize

    def __str__(self) -> str:
        return self.value


_NUMPY = {DType.F32: "float32", DType.F64: "float64", DType.BF16: "float32",
          DType.F16: "float16", DType.I32: "int32", DType.I64: "int64", DType.BOOL: "bool"}


def dtype_from_np(dt: np.dtype) -> DType | None:
    """The DType whose NumPy dtype is `dt` (float32 is f32, never bf16), or None."""
    for d in DType:
        if d.np == dt:
            return d
    return None


def round_bf16(x: np.ndarray) -> np.ndarray:
    """float32 values rounded to the nearest bfloat16 (ties to even), as
    torch's `.to(torch.bfloat16)`; NaN stays NaN, overflow goes to infinity."""
    f = np.ascontiguousarray(x, np.float32)
    bits = f.view(np.uint32).astype(np.uint64)
    rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
    out = rounded.astype(np.uint32).view(np.float32)
    return np.where(np.isnan(f), f, out).reshape(f.shape)


def round_to(x: np.ndarray, dtype: DType) -> np.ndarray:
    """x as an array of `dtype`'s NumPy holder, rounded to the type's values."""
    if dtype is DType.BF16:
        return round_bf16(np.asarray(x, np.float32))
    return np.asarray(x).astype(dtype.np, copy=False)


def widen(x: Any) -> Any:
    """A float16 array as float32 (the type ops on 16-bit values compute in);
    anything else (a region's tuple of results, a loop counter) as it is."""
    return x.astype(np.float32) if getattr(x, "dtype", None) == np.float16 else x
