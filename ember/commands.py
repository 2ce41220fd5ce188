"""What `ember compile` and `ember run` do, given parsed arguments."""

from __future__ import annotations

import argparse
from collections.abc import Callable

import numpy as np

from ember.ir.graph import Graph
from ember.ir.loc import DSLError, deep_recursion
from ember.ir.printer import print_graph
from ember.lang import ast
from ember.lang.astprint import format_ast
from ember.lang.emitter import Options
from ember.passes.optim import OptimizerConfig
from ember.passes.pipeline import PASS_NAMES
from ember.runtime.files import write_atomic
from ember.runtime.inputs import draw_inputs, ensure_fits, load_inputs
from ember.runtime.params_io import conform_params, load_params, save_npz, save_params

from . import api, backends

EMIT_CHOICES = ("ast", "ir", *PASS_NAMES, "grad", "opt", "kernels", "triton", "report")
IR_STAGES = ("ir", *PASS_NAMES, "grad", "opt")


def _options(args: argparse.Namespace) -> Options:
    return Options(train=args.train, float64=args.precision == "f64")


def compile_cmd(args: argparse.Namespace) -> int:
    program = api.parse_file(args.model)
    if args.emit == "ast":
        with deep_recursion("the syntax tree is nested too deeply to print"):
            print(format_ast(program))
        return 0
    stage = args.emit if args.emit in IR_STAGES else "opt"
    if stage == "grad" and not args.grad:
        raise DSLError("--emit grad shows the gradient pass's output: add --grad")
    g = _compile(program, args, stage)
    if args.emit in IR_STAGES and not args.target:
        print(print_graph(g))
        return 0
    from .kernel_cmds import compile_kernels
    return compile_kernels(g, args)


def run_cmd(args: argparse.Namespace) -> int:
    program = api.parse_file(args.model)
    g = _compile(program, args)
    backend, why = backends.choose(args.backend)
    print(f"backend: {why}")
    params = _params(program, args)
    given, converted = load_inputs(g, args.input, args.inputs)
    inputs, env, notes = draw_inputs(g, given, args.dims, args.seed)
    for note in converted + notes:
        print(note)
    outs = backends.run(backend, g, inputs, params, args.seed, env, args.dot_precision,
                        fused=not args.no_fuse)
    for name, value in outs.items():
        print(_summary(name, value))
    failed = _check(args, g, inputs, params, env, outs) if args.check else False
    if args.output:
        _save_outputs(args.output, outs)
        print(f"wrote {', '.join(outs)} to {args.output}")
    if args.save_grads:
        _save_grads(args, program, g, outs)
    return 1 if failed else 0


def _compile(program: ast.Program, args: argparse.Namespace, stage: str = "opt") -> Graph:
    if getattr(args, "save_grads", None) and not args.grad:
        raise DSLError("--save-grads needs --grad")
    if args.grad_inputs and not args.grad:
        raise DSLError("--grad-inputs needs --grad")
    if getattr(args, "train_step", None):
        return _compile_step(program, args, stage)
    return api.compile_program(program, args.entry, stage, _options(args), args.dims,
                               grad=args.grad, grad_inputs=args.grad_inputs, strict_dims=True,
                               precision=args.precision)


def _compile_step(program: ast.Program, args: argparse.Namespace, stage: str) -> Graph:
    """`--train-step OPT`: the whole step with the optimizer's default settings
    (its hyperparameters change constants, not the kernels' structure)."""
    if args.grad or args.train:
        raise DSLError("--train-step compiles the training-mode forward and the gradients "
                       "itself: drop --grad and --train")
    if stage not in ("opt", "step"):
        raise DSLError(f"--train-step shows the step graph (--emit opt) or its kernels, "
                       f"not --emit {stage}")
    return api.compile_train_step(program, OptimizerConfig(args.train_step), args.entry,
                                  args.dims, float64=args.precision == "f64", strict_dims=True,
                                  precision=args.precision)


def _save_grads(args: argparse.Namespace, program: ast.Program, g: Graph,
                outs: dict[str, np.ndarray]) -> None:
    """The parameters' gradients keyed like the state dict (then the inputs')."""
    grads = {name: outs[o] for o, name in api.grad_names(g).items()}
    inputs = set(g.input_names())
    params = api.complete_grads({k: v for k, v in grads.items() if k not in inputs}, program,
                                _options(args))
    params.update({f"input.{k}": v for k, v in grads.items() if k in inputs})
    save_params(args.save_grads, params)
    print(f"saved {len(params)} gradients to {args.save_grads}")


def _check(args: argparse.Namespace, g: Graph, inputs: dict[str, np.ndarray],
           params: dict[str, np.ndarray], env: dict[str, int],
           outs: dict[str, np.ndarray]) -> bool:
    """Compare with the oracle; True if some output is outside its tolerance."""
    want = api.run(g, inputs, params, args.seed, env)
    results = backends.compare(outs, want, args.dot_precision, args.precision)
    for r in results:
        print(r)
    return not all(r.ok for r in results)


def _save_outputs(path: str, outs: dict[str, np.ndarray]) -> None:
    write_atomic(path, lambda f: save_npz(f, outs), "outputs to")


def _params(program: ast.Program, args: argparse.Namespace) -> dict[str, np.ndarray]:
    """The model's whole state dict: loaded strictly, or initialized; the same
    names whichever entry or mode runs."""
    expected = {k: t for k, (t, _) in api.model_params(program, _options(args)).items()}
    ensure_fits("the parameters", list(expected.items()), {})
    if args.params:
        params, converted = conform_params(load_params(args.params), expected, args.params)
        print("\n".join([*converted, f"loaded {len(params)} parameters from {args.params}"]))
    else:
        params = api.init_model_params(program, _options(args), args.seed)
        print(f"initialized {len(params)} parameters with seed {args.seed}")
    if args.save_params:
        save_params(args.save_params, params)
        print(f"saved parameters to {args.save_params}")
    return params


def _summary(name: str, v: np.ndarray) -> str:
    shape = "[" + ", ".join(str(d) for d in v.shape) + "]"
    if v.size == 0:
        return f"{name}: {v.dtype} {shape} (empty)"
    f = v.astype(np.float64)
    with np.errstate(all="ignore"):  # inf - inf in the std of an output holding inf
        return (f"{name}: {v.dtype} {shape}  min {f.min():.6g}  max {f.max():.6g}  "
                f"mean {f.mean():.6g}  std {f.std():.6g}")


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "compile": compile_cmd, "run": run_cmd}


