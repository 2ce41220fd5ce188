"""A roofline estimate of each kernel's time on a target GPU, before any run.

A launch moves `bytes` through global memory and does `flops`; on a GPU with
bandwidth W and peak P for the kernel's arithmetic it takes at least
max(bytes / W, flops / P), and the larger term names what bounds it. The peak
depends on what does the arithmetic: tensor cores for a dot kernel (bf16/f16
operands, or fp32 operands with tf32 dots), the FMA pipes otherwise. These are
floors (perfect overlap, full occupancy, every byte once); a measured time on
the GPU divided by the estimate says how far a kernel is from its roofline.
"""

from __future__ import annotations

from dataclasses import dataclass

from ember.ir.dtypes import DType

DOT_KINDS = frozenset({"matmul", "conv", "attention", "attention_dkdv", "attention_dq",
                       "gates"})


@dataclass(frozen=True)
class Target:
    name: str
    bandwidth: float                 # bytes/s of HBM
    peaks: dict[str, float]          # flop/s by arithmetic: bf16, tf32, f32, f64 ...


# NVIDIA H100 SXM5 datasheet (dense, no sparsity): HBM3 3.35 TB/s; tensor cores
# 989 TFLOPs bf16/f16, 495 tf32; CUDA cores 67 TFLOPs fp32, 34 fp64. tf32x3
# splits each fp32 operand into 3 tf32 products: a third of the tf32 peak.
H100 = Target("H100 SXM", 3.35e12, {"bf16": 989e12, "f16": 989e12, "tf32": 495e12,
                                    "tf32x3": 165e12, "f32": 67e12, "f64": 34e12})
TARGETS = {"sm_90": H100}


def arithmetic(kind: str, dtype: DType, precision: str) -> str:
    """Which peak a kernel's flops run at: tensor cores for a dot kernel on
    half-precision operands or with tf32 dots, the FMA pipes otherwise."""
    if dtype.value in ("bf16", "f16"):
        return dtype.value if kind in DOT_KINDS else "f32"
    if dtype is DType.F64:
        return "f64"
    if kind in DOT_KINDS and precision in ("tf32", "tf32x3"):
        return precision
    return "f32"


def estimate(nbytes: int, flops: int, peak: str, target: Target = H100) -> tuple[float, str]:
    """(seconds, "memory" or "compute") for one launch."""
    memory, compute = nbytes / target.bandwidth, flops / target.peaks[peak]
    return max(memory, compute), "memory" if memory >= compute else "compute"
