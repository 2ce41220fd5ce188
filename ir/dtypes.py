"""Element types: the closed set of dtypes a tensor in the IR may have."""

from __future__ import annotations

from enum import Enum

import numpy as np


class DType(Enum):
    F32 = "f32"
    F64 = "f64"
    I32 = "i32"
    I64 = "i64"
    BOOL = "bool"

    @property
    def np(self) -> np.dtype:
        return np.dtype(_NUMPY[self])

    @property
    def is_float(self) -> bool:
        return self in (DType.F32, DType.F64)

    @property
    def is_int(self) -> bool:
        return self in (DType.I32, DType.I64)

    @property
    def itemsize(self) -> int:
        return self.np.itemsize

    def __str__(self) -> str:
        return self.value


_NUMPY = {DType.F32: "float32", DType.F64: "float64", DType.I32: "int32",
          DType.I64: "int64", DType.BOOL: "bool"}


def dtype_from_np(dt: np.dtype) -> DType | None:
    """The DType whose NumPy dtype is `dt`, or None."""
    for d in DType:
        if d.np == dt:
            return d
    return None
