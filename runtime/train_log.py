"""What a training run reports: the metrics log, the curves, the progress bar.

`--log FILE` is JSON lines, one object per optimizer step
(`{"step", "epoch", "loss", "lr", "grad_norm"}`, step 1-based, epoch 0-based)
and one per epoch (`{"epoch", "train_loss", "val_loss", "val_accuracy"}`,
the last two null without validation data or class labels). A non-finite
number is written as null, so every line is strict JSON. A fresh run
truncates the file; a resumed run appends, so the file holds the whole run.
Lines are flushed as they are written: the log of a killed run is complete
up to its last step.
"""

from __future__ import annotations

import io
import json
import math
import sys
import time
from dataclasses import dataclass, field
from typing import IO, Any

from ember.ir.loc import DSLError

from .files import printable, write_atomic


@dataclass
class History:
    """Every record of this run in memory, for the plot."""

    steps: list[dict[str, Any]] = field(default_factory=list)
    epochs: list[dict[str, Any]] = field(default_factory=list)


class MetricsLog:
    """The JSON-lines log (or nothing, without --log) plus the in-memory history."""

    def __init__(self, path: str | None, append: bool):
        self.history = History()
        self.file: IO[str] | None = None
        if path:
            try:
                self.file = open(path, "a" if append else "w", encoding="utf-8")  # noqa: SIM115
            except OSError as e:
                raise DSLError(f"cannot write the metrics log '{printable(path)}': "
                               f"{e.strerror or e}") from None

    def step(self, record: dict[str, Any]) -> None:
        self.history.steps.append(record)
        self._write(record)

    def epoch(self, record: dict[str, Any]) -> None:
        self.history.epochs.append(record)
        self._write(record)

    def _write(self, record: dict[str, Any]) -> None:
        if self.file:
            self.file.write(json.dumps({k: _finite(v) for k, v in record.items()}) + "\n")
            self.file.flush()

    def close(self) -> None:
        if self.file:
            self.file.close()


def _finite(v: Any) -> Any:
    return None if isinstance(v, float) and not math.isfinite(v) else v


def plot(path: str, h: History) -> None:
    """A PNG of the loss per step and per epoch, and the validation accuracy."""
    import matplotlib
    matplotlib.use("Agg")  # no display: render to memory
    import matplotlib.pyplot as plt
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    left.plot([r["step"] for r in h.steps], [r["loss"] for r in h.steps], lw=0.6, alpha=0.5,
              label="train (step)")
    ends = [_last_step(h, r["epoch"]) for r in h.epochs]
    for key, label in (("train_loss", "train (epoch)"), ("val_loss", "validation")):
        if any(r[key] is not None for r in h.epochs):
            left.plot(ends, [r[key] for r in h.epochs], "o-", label=label)
    left.set(xlabel="step", ylabel="loss", yscale="log", title="loss")
    left.legend()
    accuracy = [(r["epoch"] + 1, 100 * r["val_accuracy"]) for r in h.epochs
                if r["val_accuracy"] is not None]
    if accuracy:
        right.plot(*zip(*accuracy), "o-")
    else:
        right.text(0.5, 0.5, "no validation accuracy", ha="center")
    right.set(xlabel="epoch", ylabel="validation accuracy (%)", title="accuracy")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    write_atomic(path, lambda f: f.write(buf.getvalue()), "plot")


def _last_step(h: History, epoch: int) -> int:
    return max((r["step"] for r in h.steps if r["epoch"] == epoch), default=0)


class Progress:
    """One tqdm bar per epoch (on a terminal) with the running loss and samples/s."""

    def __init__(self, epoch: int, epochs: int, steps: int, start: int):
        from tqdm import tqdm
        self.bar = tqdm(total=steps, initial=start, desc=f"epoch {epoch + 1}/{epochs}",
                        unit="step", leave=False, file=sys.stderr, disable=None)
        self.t0, self.samples, self.loss_sum = time.perf_counter(), 0, 0.0

    def update(self, loss: float, batch: int) -> None:
        self.samples += batch
        self.loss_sum += loss * batch
        self.bar.set_postfix(loss=f"{self.mean_loss:.4f}", samples_s=f"{self.rate:.0f}",
                             refresh=False)
        self.bar.update()

    @property
    def mean_loss(self) -> float:
        """The mean loss per sample over the steps so far (a partial batch weighs less)."""
        return self.loss_sum / max(1, self.samples)

    @property
    def rate(self) -> float:
        return self.samples / max(1e-9, time.perf_counter() - self.t0)

    def close(self) -> None:
        self.bar.close()
