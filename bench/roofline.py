"""Roofline estimates of whole models on an H100 SXM, from the generated code.

For each model at a realistic size, the loss (forward) and one AdamW training
step, at three precisions: fp32 with IEEE dots (the default, what every kernel
did before tensor cores were used), fp32 with tf32 dots, and bf16-mixed. Each
kernel's floor is max(bytes / 3.35 TB/s, flops / the peak of its arithmetic)
(codegen/roofline.py); a model's is the sum over its launches. No GPU needed.

    .venv/bin/python bench/roofline.py            # prints a markdown table
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from ember import api
from ember.codegen.module import emit_triton
from ember.codegen.report import report
from ember.passes.optim import OptimizerConfig

ROOT = Path(__file__).resolve().parent.parent

# (label, model file, dims)
CASES = [
    ("GPT-2 small (B=8, T=1024)", "examples/gpt2_small.ember", {"B": 8, "T": 1024}),
    ("ResNet 64 ch, 32x32 (B=128)", "examples/resnet64.ember", {"B": 128}),
    ("LSTM 1024 (B=64, T=32)", "examples/lstm_1024.ember", {"B": 64, "T": 32}),
]
# (label, --precision, --dot-precision)
PRECISIONS = [("fp32 ieee", "f32", "ieee"), ("fp32 tf32", "f32", "tf32"),
              ("bf16-mixed", "bf16-mixed", "ieee")]


def estimate(path: str, dims: dict[str, int], precision: str, dots: str,
             step: bool) -> dict:
    program = api.parse_file(ROOT / path)
    if step:
        g = api.compile_train_step(program, OptimizerConfig("adamw", weight_decay=0.01,
                                                            clip=1.0),
                                   dims=dims, precision=precision)
    else:
        g = api.compile_program(program, "loss", dims=dims, precision=precision)
    rep = report(emit_triton(g, precision=dots), dims)
    t = rep["total"]
    memory = sum(k["est_us"] for k in rep["kernels"] if k["bound"] == "memory")
    return {"launches": t["launches"], "est_ms": t["est_us"] / 1e3,
            "memory_share": memory / t["est_us"] if t["est_us"] else 0.0,
            "gbytes": t["bytes"] / 1e9, "tflop": t["flops"] / 1e12}


def main() -> None:
    print("| model | what | launches | GB moved | TFLOP | "
          + " | ".join(f"{p} (ms)" for p, _, _ in PRECISIONS) + " | memory-bound share (bf16) |")
    print("|---|---|---:|---:|---:|" + "---:|" * len(PRECISIONS) + "---:|")
    for label, path, dims in CASES:
        for what, step in (("loss", False), ("AdamW step", True)):
            start = time.perf_counter()
            rows = [estimate(path, dims, p, d, step) for _, p, d in PRECISIONS]
            first, last = rows[0], rows[-1]
            times = " | ".join(f"{r['est_ms']:.3f}" for r in rows)
            print(f"| {label} | {what} | {first['launches']} | {first['gbytes']:.2f} | "
                  f"{first['tflop']:.2f} | {times} | {last['memory_share']:.0%} |")
            print(f"  ({time.perf_counter() - start:.1f} s to compile and estimate)",
                  file=sys.stderr)


if __name__ == "__main__":
    main()
