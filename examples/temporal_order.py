"""The temporal order problem, a dataset for models/lstm.ember.

Hochreiter and Schmidhuber's experiment 6a ("Long Short-Term Memory", 1997),
the task that showed an LSTM can carry information across long time lags
where plain recurrent networks fail. Each sequence has LENGTH symbols from an
alphabet of 8, one-hot encoded (x: f32[N, LENGTH, 8]):

    B  distractors from {a, b, c, d}  E      with two relevant symbols, each
                                             X or Y, at random positions

The label (y: i32[N]) is the order of the two relevant symbols: XX -> 0,
XY -> 1, YX -> 2, YY -> 3. Chance is 25%, and no single step decides the
label: the network must notice the first relevant symbol, keep it in its
cell state through up to LENGTH - 4 distractors, and combine it with the
second. Unlike the 1997 setup, both positions are uniform over the whole
sequence (not two fixed windows), so nothing about *where* to look is given.

Measured with a PyTorch twin of the model (hidden 32; Adam lr 3e-3, batch
32, 10 epochs of the default 4000 training sequences): 99.9-100% validation
accuracy over three seeds, under a minute each on 2 CPU cores.
bench/train.py runs this recipe on Ember.

    python examples/temporal_order.py --out data/temporal_order
    ember train models/lstm.ember --data data/temporal_order/train.npz \\
        --val data/temporal_order/val.npz --optimizer adam --lr 3e-3 --epochs 10
"""

from __future__ import annotations

import numpy as np
from task_io import main

LENGTH = 32
SYMBOLS = "abcdXYBE"                       # one-hot feature k is SYMBOLS[k]
X, BEGIN, END = SYMBOLS.index("X"), SYMBOLS.index("B"), SYMBOLS.index("E")


def make(n: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """n sequences and their labels."""
    s = rng.integers(0, X, (n, LENGTH))    # distractors a..d
    s[:, 0], s[:, -1] = BEGIN, END
    # two distinct positions strictly between B and E, in increasing order
    pos = np.sort(rng.permuted(np.tile(np.arange(1, LENGTH - 1), (n, 1)), axis=1)[:, :2], axis=1)
    is_y = rng.integers(0, 2, (n, 2))      # 0: X, 1: Y
    rows = np.arange(n)[:, None]
    s[rows, pos] = X + is_y
    x = np.eye(len(SYMBOLS), dtype=np.float32)[s]
    return {"x": x, "y": (2 * is_y[:, 0] + is_y[:, 1]).astype(np.int32)}


if __name__ == "__main__":
    main(make, __doc__, default_n=4000)
