"""`ember train`: its options, and turning them into a training run.

Everything that can be wrong with the inputs (the model, the data, the
checkpoint, the globs) is checked before the first step, as a DSLError
(exit 1, no traceback). The loop itself is runtime/trainer.py.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from ember.ir.graph import Graph, TensorType
from ember.ir.loc import DSLError
from ember.lang import ast
from ember.lang.emitter import Options
from ember.lang.lower import declared_buffers
from ember.passes.optim import OPTIMIZERS, OptimizerConfig
from ember.passes.precision import PRECISIONS
from ember.runtime import checkpoint, data
from ember.runtime.files import ensure_distinct
from ember.runtime.schedules import SCHEDULES, Schedule
from ember.runtime.trainer import Settings, Task, Trainer

from . import api, backends
from .backends import BACKENDS, DOT_PRECISIONS


def _number(kind: Callable[[str], Any], low: float, low_ok: bool) -> Callable[[str], Any]:
    """An argparse type: `kind` values above `low` (or equal, if low_ok), finite."""
    def parse(text: str) -> Any:
        try:
            v = kind(text)
        except ValueError:
            v = None
        if v is None or not math.isfinite(v) or v < low or (v == low and not low_ok):
            raise argparse.ArgumentTypeError(
                f"expected a {'number' if kind is float else 'whole number'} "
                f"{'>=' if low_ok else '>'} {low:g}, found '{text[:40]}'")
        return v
    return parse


POSITIVE_INT, COUNT = _number(int, 0, False), _number(int, 0, True)
POSITIVE, NON_NEGATIVE = _number(float, 0, False), _number(float, 0, True)


def add_arguments(p: argparse.ArgumentParser, dims: Callable[[str], dict[str, int]],
                  seed: Callable[[str], int]) -> None:
    """The options of `ember train` (dims and seed parse as in run/compile)."""
    p.add_argument("model", help="a .ember model file")
    p.add_argument("--entry", default="loss", help="the loss function to train (loss)")
    p.add_argument("--data", required=True, metavar="digits|TRAIN.npz",
                   help="training data: an .npz with arrays named after the entry's inputs, "
                        "or the built-in digits")
    p.add_argument("--val", metavar="VAL.npz", help="validation data (as --data)")
    p.add_argument("--epochs", type=POSITIVE_INT, default=10, help="passes over the data (10)")
    p.add_argument("--batch-size", type=POSITIVE_INT, default=32, help="samples per step (32)")
    p.add_argument("--drop-last", action="store_true", help="drop the last partial batch")
    p.add_argument("--optimizer", choices=OPTIMIZERS, default="adam", help="(adam)")
    p.add_argument("--lr", type=POSITIVE, default=1e-3, help="peak learning rate (1e-3)")
    p.add_argument("--momentum", type=NON_NEGATIVE, default=0.0, help="SGD momentum (0)")
    p.add_argument("--nesterov", action="store_true", help="SGD: Nesterov momentum")
    p.add_argument("--weight-decay", type=NON_NEGATIVE, default=0.0,
                   help="L2 (sgd, adam) or decoupled (adamw) weight decay (0)")
    p.add_argument("--clip", type=POSITIVE, help="clip gradients to this global norm")
    p.add_argument("--schedule", choices=SCHEDULES, default="constant",
                   help="learning rate per step (constant)")
    p.add_argument("--warmup", type=COUNT, default=0, metavar="STEPS",
                   help="linear warmup steps before the schedule (0)")
    p.add_argument("--step-size", type=COUNT, default=0, metavar="STEPS",
                   help="--schedule step: steps between decays (a third of the run)")
    p.add_argument("--gamma", type=POSITIVE, default=0.1, help="--schedule step: decay (0.1)")
    p.add_argument("--seed", type=seed, default=0,
                   help="seed for initialization, shuffling and dropout (0)")
    p.add_argument("--backend", choices=BACKENDS, default="auto",
                   help="auto: triton on a CUDA GPU, else the numpy oracle")
    p.add_argument("--precision", choices=PRECISIONS, default="f32",
                   help="f64 trains in float64 (exact comparisons); bf16-mixed/f16-mixed "
                        "run dot products on 16-bit operands, with f32 master weights")
    p.add_argument("--dot-precision", choices=DOT_PRECISIONS, default="ieee",
                   help="fp32 tl.dot precision in generated kernels (ieee)")
    p.add_argument("--dims", type=dims, default={}, metavar="T=16",
                   help="values for symbolic dimensions the data does not fix")
    p.add_argument("--params", metavar="INIT.safetensors",
                   help="start from these parameters (an Ember checkpoint or a PyTorch "
                        "state dict)")
    p.add_argument("--freeze", type=checkpoint.split_globs, default=[], metavar="GLOBS",
                   help="parameters not trained: comma-separated globs on state-dict names")
    p.add_argument("--reinit", type=checkpoint.split_globs, default=[], metavar="GLOBS",
                   help="with --params: re-initialize these parameters (a new head)")
    p.add_argument("--save", metavar="CKPT.safetensors",
                   help="checkpoint after every epoch, at the end and on Ctrl-C")
    p.add_argument("--resume", metavar="CKPT", help="continue from a checkpoint")
    p.add_argument("--log", metavar="metrics.jsonl", help="write metrics as JSON lines")
    p.add_argument("--plot", metavar="curves.png", help="draw the loss and accuracy curves")


def train_cmd(args: argparse.Namespace) -> int:
    _check_options(args)
    backend, why = backends.choose(args.backend)
    print(f"backend: {why}")
    program = api.parse_file(args.model)
    float64 = args.precision == "f64"
    optimizer = OptimizerConfig(args.optimizer, momentum=args.momentum, nesterov=args.nesterov,
                                weight_decay=args.weight_decay, clip=args.clip)
    frozen = _frozen(program, args.freeze, float64)
    _check_batch_dims(api.compile_program(program, args.entry, "ir"), args.dims)
    step = api.compile_train_step(program, optimizer, args.entry, args.dims, float64, frozen,
                                  strict_dims=True, precision=args.precision)
    inputs = {step.nodes[i].attrs["name"]: step.nodes[i].tensor for i in step.inputs
              if not step.nodes[i].attrs["name"].startswith("optim.")}
    task = _task(args, program, step, optimizer, inputs, float64)
    state = _state(args, program, step, float64)
    settings = Settings(args.epochs, args.batch_size, _schedule(args), args.seed,
                        args.drop_last, backend, args.dot_precision, float64, args.save,
                        args.log, args.plot)
    print(f"training {step.name} with {args.optimizer}, lr {args.lr:g} ({args.schedule}"
          f"{f', warmup {args.warmup}' if args.warmup else ''}), batch {args.batch_size}, "
          f"{args.epochs} epoch{'s' if args.epochs > 1 else ''}")
    return Trainer(task, settings, state, args.dims).run()


def _check_options(args: argparse.Namespace) -> None:
    """Options that contradict each other, and outputs that would replace inputs."""
    if args.resume and (args.params or args.reinit):
        raise DSLError("--resume continues a run from its checkpoint; --params and --reinit "
                       "only start a new one")
    if args.reinit and not args.params:
        raise DSLError("--reinit re-initializes part of a loaded model: it needs --params")
    if args.data == "digits" and args.val:
        raise DSLError("--data digits brings its test split as validation data; drop --val")
    inputs = [("the model file", args.model), ("--val", args.val), ("--params", args.params),
              ("--data", None if args.data == "digits" else args.data)]
    ensure_distinct([("--save", args.save), ("--log", args.log), ("--plot", args.plot)],
                    inputs)
    # --save may be --resume: continuing a run in place is the usual way
    ensure_distinct([("--log", args.log), ("--plot", args.plot)], [("--resume", args.resume)])


def _schedule(args: argparse.Namespace) -> Schedule:
    return Schedule(args.schedule, args.lr, 1, args.warmup, args.step_size, args.gamma)


def _frozen(program: ast.Program, globs: list[str], float64: bool) -> list[str]:
    """The trainable parameters the --freeze globs name (buffers are never trained)."""
    if not globs:
        return []
    options = Options(float64=float64)
    buffers = declared_buffers(program, options)
    names = [n for n in api.model_params(program, options) if n not in buffers]
    frozen = checkpoint.matching(globs, names, "--freeze")
    print(f"frozen: {', '.join(frozen)}")
    return frozen


def _check_batch_dims(entry: Graph, dims: Mapping[str, int]) -> None:
    """--dims must leave the batch dim free: batches (the last one too) bind it."""
    for i in entry.inputs:
        name, t = entry.nodes[i].attrs["name"], entry.nodes[i].tensor
        if t.shape and isinstance(t.shape[0], str) and t.shape[0] in dims:
            raise DSLError(f"--dims {t.shape[0]}: {t.shape[0]} is the batch dimension of "
                           f"input '{name}' ({t}); --batch-size sets it")


def _task(args: argparse.Namespace, program: ast.Program, step: Graph,
          optimizer: OptimizerConfig, inputs: Mapping[str, TensorType],
          float64: bool) -> Task:
    """The step, the eval graphs and the data, checked against each other."""
    if args.data == "digits":
        train, val = data.digits(inputs)
    else:
        train = data.load_npz(args.data, inputs)
        val = data.load_npz(args.val, inputs) if args.val else None
    options = Options(float64=float64)
    forward = (api.compile_program(program, "forward", options=options, dims=args.dims)
               if _has_entry(program, "forward") else None)
    label, classes = _labels(forward, inputs)
    for ds in (train, val):
        if ds is not None:
            for note in ds.notes:
                print(note)
            if label and classes:
                data.check_labels(ds, [label], classes)
    print(f"data: {train.n} training samples" + (f", {val.n} validation" if val else ""))
    loss = api.compile_program(program, args.entry, options=options, dims=args.dims)
    return Task(step, optimizer, train, val, loss if val else None,
                forward if val and label else None, label)


def _has_entry(program: ast.Program, name: str) -> bool:
    return any(isinstance(m, ast.FnDef) and m.name == name for item in program.items
               if isinstance(item, ast.LayerDef) and item.is_model for m in item.members)


def _labels(forward: Graph | None, inputs: Mapping[str, TensorType]
            ) -> tuple[str | None, int | None]:
    """The class-id input and the class count (the forward output's last dim):
    the one integer input of the loss that forward does not take, shaped like
    forward's output without its last axis. (None, None) if there is none."""
    if forward is None or len(forward.outputs) != 1:
        return None, None
    out = forward.nodes[forward.outputs[0]].tensor
    taken = set(forward.input_names())
    labels = [k for k, t in inputs.items() if t.dtype.is_int and k not in taken
              and t.shape == out.shape[:-1]]
    classes = out.shape[-1] if out.shape else None
    if len(labels) != 1 or not isinstance(classes, int):
        return None, None
    return labels[0], classes


def _state(args: argparse.Namespace, program: ast.Program, step: Graph,
           float64: bool) -> dict[str, np.ndarray]:
    """The state dict to start from: fresh, from --params (with --reinit), or --resume."""
    options = Options(float64=float64)
    model = {k: t for k, (t, _) in api.model_params(program, options).items()}
    if args.params:
        params, ignored = checkpoint.load_init(args.params, model)
        print(f"loaded {len(params)} parameters from {args.params}"
              + (f" (ignored {', '.join(ignored)})" if ignored else ""))
        if args.reinit:
            names = checkpoint.matching(args.reinit, list(model), "--reinit")
            fresh = api.init_model_params(program, options, args.seed)
            params.update({name: fresh[name] for name in names})
            print(f"re-initialized {', '.join(names)} (seed {args.seed})")
    else:
        params = api.init_model_params(program, options, args.seed)
        print(f"initialized {len(params)} parameters with seed {args.seed}")
    state = {**api.init_train_state(step, params), checkpoint.STEP: np.asarray(0, np.int64)}
    if not args.resume:
        return state
    state = checkpoint.load_resume(args.resume, checkpoint.types_of(state))
    print(f"resuming from {args.resume} at step {int(state[checkpoint.STEP])}")
    return state
