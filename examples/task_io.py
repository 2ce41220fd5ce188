"""The command line shared by the example dataset scripts.

Each script defines `make(n, rng) -> {array name: array}` for one task; `main`
parses `--out DIR [--n N --seed S]` and writes DIR/train.npz (N samples) and
DIR/val.npz (N // 4 samples). The two files come from independent streams of
one seed (`SeedSequence(S).spawn(2)`), so the output is a function of (N, S)
alone and the validation set is not a prefix of the training set.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

Make = Callable[[int, np.random.Generator], dict[str, np.ndarray]]


def main(make: Make, doc: str, default_n: int) -> None:
    """Parse the command line and write the train and val files."""
    p = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    p.add_argument("--out", required=True, type=Path, help="directory for train.npz and val.npz")
    p.add_argument("--n", type=int, default=default_n,
                   help=f"training samples; validation gets n // 4 ({default_n})")
    p.add_argument("--seed", type=int, default=0, help="random seed (0)")
    args = p.parse_args()
    if args.n < 4:
        p.error(f"--n must be at least 4, found {args.n}")
    args.out.mkdir(parents=True, exist_ok=True)
    train_seq, val_seq = np.random.SeedSequence(args.seed).spawn(2)
    for name, n, seq in (("train", args.n, train_seq), ("val", args.n // 4, val_seq)):
        arrays: dict[str, Any] = make(n, np.random.default_rng(seq))  # Any: savez's stubs
        np.savez(args.out / f"{name}.npz", **arrays)
        shapes = ", ".join(f"{k} {a.dtype}{list(a.shape)}" for k, a in arrays.items())
        print(f"wrote {args.out / f'{name}.npz'}: {shapes}")
