"""The training loop: batches through the compiled step, metrics, checkpoints.

The compiled step graph (`api.compile_train_step`) does all the arithmetic;
the host feeds it batches, the scheduled learning rate and a dropout seed,
and replaces each state entry with the step's `new.<name>` output. Everything
a step depends on is a function of (seed, step): the batch order (data.py),
the learning rate (schedules.py) and the dropout seed (`step_seed`). So a run
resumed from a checkpoint replays exactly the steps an uninterrupted run
takes, bit for bit on the numpy backend.

The state is replaced whole, in one assignment, after a step has finished, so
a Ctrl-C at any moment leaves a consistent state to save.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from ember import api
from ember.ir.graph import Graph
from ember.ir.loc import DSLError
from ember.passes.optim import OptimizerConfig

from . import checkpoint
from .checkpoint import STEP
from .data import Dataset, batches, order, steps_per_epoch
from .schedules import Schedule, lr_at
from .train_log import MetricsLog, Progress, plot

Arrays = dict[str, np.ndarray]
Runner = Callable[[Mapping[str, np.ndarray], Mapping[str, np.ndarray], int], Arrays]


@dataclass(frozen=True)
class Task:
    """What is trained on what: the compiled graphs and the checked data.
    `forward` (eval mode) and `label` give the validation accuracy when the
    labels are class ids; `loss` is the entry in eval mode, for the val loss."""

    step: Graph
    optimizer: OptimizerConfig
    train: Dataset
    val: Dataset | None = None
    loss: Graph | None = None
    forward: Graph | None = None
    label: str | None = None


@dataclass(frozen=True)
class Settings:
    """The loop's options, as `ember train` spells them."""

    epochs: int
    batch_size: int
    schedule: Schedule  # its `total` is replaced by the run's step count
    seed: int = 0
    drop_last: bool = False
    backend: str = "numpy"
    dot_precision: str = "ieee"
    float64: bool = False
    save: str | None = None
    log: str | None = None
    plot: str | None = None


def step_seed(seed: int, k: int) -> int:
    """The dropout seed of step k (0-based), in [0, 2**63): SeedSequence([seed, k])'s
    first 64-bit word, shifted right by one."""
    return int(np.random.SeedSequence([seed, k]).generate_state(1, np.uint64)[0]) >> 1


def runner(backend: str, g: Graph, dot_precision: str, env: Mapping[str, int]) -> Runner:
    """g as a function (inputs, params, seed) -> outputs, compiled once."""
    from ember import backends
    run = backends.runner(backend, g, dot_precision)
    return lambda inputs, params, seed: run(inputs, params, seed, env)


class Trainer:
    """One training run; `state` is the whole state dict, `optim.step` included."""

    def __init__(self, task: Task, s: Settings, state: Arrays, env: Mapping[str, int]):
        self.task, self.s, self.state = task, s, state
        self.spe = steps_per_epoch(task.train.n, s.batch_size, s.drop_last)
        if self.spe == 0:
            raise DSLError(f"--drop-last with --batch-size {s.batch_size} leaves no batch of "
                           f"the {task.train.n} training samples")
        self.schedule = Schedule(s.schedule.kind, s.schedule.lr, s.epochs * self.spe,
                                 s.schedule.warmup, s.schedule.step_size, s.schedule.gamma)
        self.step_fn = runner(s.backend, task.step, s.dot_precision, env)
        self.eval_fns = {k: runner(s.backend, g, s.dot_precision, env)
                         for k, g in (("loss", task.loss), ("forward", task.forward)) if g}
        self.log = MetricsLog(s.log, append=self.steps_done > 0)
        self.saved = "no checkpoint written yet" if s.save else "nothing saved (no --save)"

    @property
    def steps_done(self) -> int:
        return int(self.state[STEP])

    def run(self) -> int:
        """Train to the last epoch: 0, or 130 after a Ctrl-C (a checkpoint saved)."""
        if self.steps_done >= self.s.epochs * self.spe:
            raise DSLError(f"the run is already at step {self.steps_done}, the end of epoch "
                           f"{self.s.epochs}; raise --epochs to train on")
        try:
            for epoch in range(self.steps_done // self.spe, self.s.epochs):
                self._epoch(epoch)
        except KeyboardInterrupt:
            self._checkpoint()
            print(f"\ninterrupted at step {self.steps_done}: {self.saved}", file=sys.stderr)
            return 130
        finally:
            self.log.close()
            if self.s.plot and self.log.history.steps:
                plot(self.s.plot, self.log.history)
        print(f"trained {self.steps_done} steps; {self.saved}")
        return 0

    def _epoch(self, epoch: int) -> None:
        done = self.steps_done - epoch * self.spe  # steps of this epoch before a resume
        bar = Progress(epoch, self.s.epochs, self.spe, done)
        try:
            for batch in batches(self.task.train, self.s.batch_size,
                                 order(self.task.train.n, self.s.seed, epoch),
                                 self.s.drop_last, start=done):
                bar.update(self._step(batch, epoch), len(next(iter(batch.values()))))
        finally:
            bar.close()
        record = {"epoch": epoch, "train_loss": bar.mean_loss, **self._validate()}
        self.log.epoch(record)
        self._checkpoint()
        print(_summary(record, self.s.epochs, bar))

    def _step(self, batch: Arrays, epoch: int) -> float:
        k = self.steps_done
        lr = lr_at(self.schedule, k)
        scalars = api.step_scalars(self.task.optimizer, lr, k + 1, self.s.float64)
        outs = self.step_fn({**batch, **scalars}, self._graph_state(), step_seed(self.s.seed, k))
        loss = float(outs["loss"])
        if not math.isfinite(loss):
            raise DSLError(f"the loss is {loss} at step {k + 1} (epoch {epoch + 1}); training "
                           f"stopped; the state of this step is not saved ({self.saved})",
                           note="try a lower --lr, --clip 1.0, or check the data")
        new = {k: outs["new." + k] for k in self.state if "new." + k in outs}
        self.state = {**self.state, **new, STEP: np.asarray(k + 1, np.int64)}
        self.log.step({"step": k + 1, "epoch": epoch, "loss": loss, "lr": lr,
                       "grad_norm": float(outs["grad_norm"])})
        return loss

    def _graph_state(self) -> Arrays:
        return {k: v for k, v in self.state.items() if k != STEP}

    def _validate(self) -> dict[str, Any]:
        """Mean loss per sample and accuracy on the validation data, eval mode."""
        val, fns = self.task.val, self.eval_fns
        if val is None:
            return {"val_loss": None, "val_accuracy": None}
        params = {k: v for k, v in self.state.items() if not k.startswith("optim.")}
        loss_sum, correct, labels = 0.0, 0, 0
        for batch in batches(val, self.s.batch_size, np.arange(val.n)):
            n = len(next(iter(batch.values())))
            if "loss" in fns:
                loss_sum += n * float(next(iter(fns["loss"](batch, params, 0).values())))
            if "forward" in fns and self.task.label:
                logits = next(iter(fns["forward"](batch, params, 0).values()))
                correct += int((logits.argmax(-1) == batch[self.task.label]).sum())
                labels += batch[self.task.label].size
        return {"val_loss": loss_sum / val.n if "loss" in fns else None,
                "val_accuracy": correct / labels if labels else None}

    def _checkpoint(self) -> None:
        if self.s.save:
            checkpoint.save(self.s.save, self.state)
            self.saved = f"checkpoint (step {self.steps_done}) saved to {self.s.save}"


def _summary(r: Mapping[str, Any], epochs: int, bar: Progress) -> str:
    parts = [f"epoch {r['epoch'] + 1}/{epochs}", f"train loss {r['train_loss']:.4f}"]
    if r["val_loss"] is not None:
        parts.append(f"val loss {r['val_loss']:.4f}")
    if r["val_accuracy"] is not None:
        parts.append(f"val accuracy {100 * r['val_accuracy']:.2f}%")
    parts.append(f"({bar.rate:.0f} samples/s)")
    return "  ".join(parts)
