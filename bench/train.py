"""Training benchmark: every model in models/ trained to its accuracy target
by `ember train` on the numpy backend, beside its PyTorch twin (eager, and
torch.compile) trained the same way from the same initial parameters.

    python bench/train.py [--models mlp,lenet] [--no-compile] [--write docs/benchmarks.md]

The image models train on the built-in digits (the fixed 80/20 split of
`ember train --data digits`; accuracy on the test split, which takes no part
in training or model selection); the LSTM and the transformer on the
examples/ tasks, at the sizes in RECIPES. Each twin (tests/test_models_vs_torch.py)
starts from Ember's initial parameters for the run's seed and sees the same
batches in the same order (ember.runtime.data.order); dropout masks come from
torch's generator, so the runs agree in distribution, not step by step (the
step-by-step parity is tests/test_train_parity.py).

Wall time is the whole run: for Ember the `ember train` process (parsing,
compiling, training, a validation pass per epoch); for the twins the same
loop in this process, torch.compile's compilation included. steps/s is the
step count over that wall time. Accuracy is on the validation data after the
last epoch; for the digit-sorting transformer also on the answer positions
alone (the filler positions are trivial, see examples/sort_digits.py).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))  # the PyTorch twins live with the tests

from test_models_vs_torch import NAMES, TORCH_MODELS, _ce  # noqa: E402

from ember import api  # noqa: E402
from ember.runtime import data  # noqa: E402
from ember.runtime.params_io import load_params  # noqa: E402


@dataclass(frozen=True)
class Recipe:
    """How one model is trained: data, epochs and learning-rate schedule
    (always Adam, lr 3e-3, batch 32, seed 0)."""

    task: str            # "digits" or the examples/ script that writes the data
    epochs: int
    schedule: str = "constant"
    n: int = 0           # training samples the examples/ script writes
    target: float = 0.0  # the accuracy the model must reach


RECIPES = {
    "mlp": Recipe("digits", 20, target=0.97),
    "lenet": Recipe("digits", 20, target=0.98),
    "resnet": Recipe("digits", 20, target=0.98),
    "lstm": Recipe("temporal_order", 10, n=4000, target=0.99),
    "transformer": Recipe("sort_digits", 10, "cosine", n=4000, target=0.99),
}
LR, BATCH, SEED = 3e-3, 32, 0
DROPOUT_WIDTH = {"mlp": 128, "lenet": 128}  # features of the dropout layer in each twin


@dataclass(frozen=True)
class Result:
    backend: str
    accuracy: float
    answer_accuracy: float | None  # the transformer's sorted digits alone
    wall_s: float
    steps: int


# ---- data ----------------------------------------------------------------------------

def datasets(model: str, workdir: Path) -> tuple[dict, dict, list[str]]:
    """(train arrays, val arrays, `ember train` data options) for the model's task."""
    r = RECIPES[model]
    if r.task == "digits":
        g = api.compile_file(ROOT / "models" / f"{model}.ember", "loss")
        inputs = {g.nodes[i].attrs["name"]: g.nodes[i].tensor for i in g.inputs}
        train, val = data.digits(inputs)
        return train.arrays, val.arrays, ["--data", "digits"]
    out = workdir / r.task
    subprocess.run([sys.executable, str(ROOT / "examples" / f"{r.task}.py"), "--out", str(out),
                    "--n", str(r.n), "--seed", str(SEED)], check=True, capture_output=True)
    arrays = [dict(np.load(out / f"{split}.npz")) for split in ("train", "val")]
    return arrays[0], arrays[1], ["--data", str(out / "train.npz"),
                                  "--val", str(out / "val.npz")]


def answer_accuracy(model: str, logits: np.ndarray, labels: np.ndarray) -> float | None:
    """The sorting task's accuracy on the second half of each sequence."""
    if model != "transformer":
        return None
    half = labels.shape[1] // 2
    return float(np.mean(logits[:, half:].argmax(-1) == labels[:, half:]))


# ---- Ember -----------------------------------------------------------------------------

def run_ember(model: str, data_args: list[str], val: dict, workdir: Path) -> Result:
    """`ember train` on the numpy backend, timed as a whole process."""
    r, log, ckpt = RECIPES[model], workdir / f"{model}.jsonl", workdir / f"{model}.safetensors"
    cmd = [sys.executable, "-m", "ember", "train", str(ROOT / "models" / f"{model}.ember"),
           *data_args, "--optimizer", "adam", "--lr", str(LR), "--batch-size", str(BATCH),
           "--epochs", str(r.epochs), "--schedule", r.schedule, "--seed", str(SEED),
           "--backend", "numpy", "--log", str(log), "--save", str(ckpt)]
    start = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True, cwd=ROOT)
    wall = time.perf_counter() - start
    records = [json.loads(line) for line in log.read_text().splitlines()]
    last = [rec for rec in records if "val_accuracy" in rec][-1]
    steps = max(rec["step"] for rec in records if "step" in rec)
    return Result("ember (numpy)", last["val_accuracy"], ember_answers(model, val, ckpt),
                  wall, steps)


def ember_answers(model: str, val: dict, ckpt: Path) -> float | None:
    """answer_accuracy of the trained checkpoint's forward pass on the oracle."""
    if model != "transformer":
        return None
    g = api.compile_file(ROOT / "models" / f"{model}.ember", "forward")
    params = {k: v for k, v in load_params(ckpt).items() if k in g.params()}
    (logits,) = api.run(g, {"ids": val["ids"]}, params).values()
    return answer_accuracy(model, logits, val["targets"])


# ---- PyTorch twins -------------------------------------------------------------------

def run_torch(model: str, train: dict, val: dict, compiled: bool) -> Result:
    """The twin trained with torch.optim.Adam on Ember's batches."""
    torch.manual_seed(SEED)
    twin, step = build_twin(model, compiled)
    x_name, y_name, _ = NAMES[model]
    n, r = len(train[y_name]), RECIPES[model]
    spe = data.steps_per_epoch(n, BATCH, False)
    opt = torch.optim.Adam(twin.parameters(), lr=LR)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, r.epochs * spe) \
        if r.schedule == "cosine" else None
    tensors = {k: torch.from_numpy(np.asarray(v)) for k, v in train.items()}
    start = time.perf_counter()
    for epoch in range(r.epochs):
        twin.train()
        for idx in np.array_split(data.order(n, SEED, epoch), np.arange(BATCH, n, BATCH)):
            if model in DROPOUT_WIDTH:  # the twins take dropout's keep-mask as an input
                twin.keep = torch.rand(len(idx), DROPOUT_WIDTH[model]) >= twin.P_DROP
            loss = _ce(step(tensors[x_name][idx]), tensors[y_name][idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            if sched:
                sched.step()
        logits = evaluate(twin, step, val[x_name])
    wall = time.perf_counter() - start
    acc = float(np.mean(logits.argmax(-1) == val[y_name]))
    return Result("torch.compile" if compiled else "PyTorch eager", acc,
                  answer_accuracy(model, logits, val[y_name]), wall, r.epochs * spe)


def build_twin(model: str, compiled: bool):
    """The twin holding Ember's initial parameters, and the callable to step it with."""
    params = api.init_model_params(api.parse_file(ROOT / "models" / f"{model}.ember"),
                                   seed=SEED)
    twin = TORCH_MODELS[model]()
    twin.load_state_dict({k: torch.from_numpy(v) for k, v in params.items()}, strict=True)
    return twin, (torch.compile(twin) if compiled else twin)


def evaluate(twin, step, x: np.ndarray) -> np.ndarray:
    """Eval-mode logits for the validation inputs."""
    twin.eval()
    with torch.no_grad():
        return step(torch.from_numpy(np.asarray(x))).numpy()


# ---- report --------------------------------------------------------------------------

def table(results: dict[str, list[Result]]) -> str:
    """The markdown section: one row per model and backend."""
    lines = ["| model | task | recipe | target | backend | accuracy | wall | steps/s |",
             "|---|---|---|---:|---|---:|---:|---:|"]
    for model, rows in results.items():
        r = RECIPES[model]
        recipe = f"{r.epochs} epochs, {r.schedule}"
        task = "digits" if r.task == "digits" else f"{r.task} (n={r.n})"
        for res in rows:
            acc = f"{res.accuracy:.2%}"
            if res.answer_accuracy is not None:
                acc += f" ({res.answer_accuracy:.2%} answers)"
            lines.append(f"| {model} | {task} | {recipe} | {r.target:.0%} | {res.backend} | "
                         f"{acc} | {res.wall_s:.0f} s | {res.steps / res.wall_s:.1f} |")
    return "\n".join(lines)


def section(results: dict[str, list[Result]]) -> str:
    machine = f"{platform.machine()}, {len(os.sched_getaffinity(0))} cores"
    return (f"{HEADING}\n\n`python bench/train.py` on {time.strftime('%Y-%m-%d')}, CPU only "
            f"({machine}, no GPU). Adam, lr {LR:g}, batch {BATCH}, seed {SEED}; "
            "see the script's docstring for what is timed.\n\n" + table(results) + "\n")


HEADING = "## Training to the accuracy targets"


def write_section(path: Path, text: str) -> None:
    """Replace this script's section of `path` (or append it), leaving the rest."""
    doc = path.read_text()
    start = doc.find(HEADING)
    if start < 0:
        path.write_text(doc.rstrip("\n") + "\n\n" + text)
        return
    end = doc.find("\n## ", start + len(HEADING))
    path.write_text(doc[:start] + text + (doc[end:] if end >= 0 else ""))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=",".join(RECIPES), help="comma-separated (all)")
    ap.add_argument("--no-compile", action="store_true", help="skip torch.compile")
    ap.add_argument("--write", type=Path, help="put the table in this markdown file")
    args = ap.parse_args()
    results: dict[str, list[Result]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for model in args.models.split(","):
            train, val, data_args = datasets(model, Path(tmp))
            results[model] = [run_ember(model, data_args, val, Path(tmp)),
                              run_torch(model, train, val, compiled=False)]
            if not args.no_compile:
                results[model].append(run_torch(model, train, val, compiled=True))
            print(table({model: results[model]}).splitlines()[-1], flush=True)
    print(section(results))
    if args.write:
        write_section(args.write, section(results))


if __name__ == "__main__":
    main()
