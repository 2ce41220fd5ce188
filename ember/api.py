"""The Python API the CLI is built on: compile a model file, then run it.

    g = ember.api.compile_file("models/mlp.ember", entry="loss")
    params = ember.api.init_params(g, seed=0)
    outs = ember.api.run(g, {"x": x, "y": y}, params)

    # the loss and its gradients: outs["grad.hidden.w"], ...
    g = ember.api.compile_file("models/mlp.ember", entry="loss", grad=True)
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ember.ir.graph import Graph, TensorType, walk_nodes
from ember.ir.loc import DSLError, Loc
from ember.ir.ops import Op
from ember.ir.verify import verify
from ember.lang import ast
from ember.lang.emitter import Options
from ember.lang.lower import declared_buffers, declared_params, lower
from ember.lang.parser import parse
from ember.passes.grad import grad as differentiate
from ember.passes.optim import OptimizerConfig, freeze, train_step
from ember.passes.pipeline import PASS_NAMES, apply_precision, optimize
from ember.passes.shapes import bind_dims
from ember.runtime import init, oracle
from ember.runtime.inputs import check_dim_names


def read_source(path: str | Path) -> str:
    p = Path(path)
    if not p.exists():
        raise DSLError(f"model file '{path}' does not exist")
    if not p.is_file():
        raise DSLError(f"'{path}' is not a file; expected a .ember model file")
    try:
        return p.read_text(encoding="utf-8-sig")  # a byte-order mark is not source
    except (OSError, UnicodeDecodeError) as e:
        reason = e.strerror if isinstance(e, OSError) and e.strerror else e
        raise DSLError(f"cannot read model file '{path}': {reason}") from None


def parse_file(path: str | Path) -> ast.Program:
    return parse(read_source(path), str(path))


def compile_program(program: ast.Program, entry: str = "forward", stage: str = "opt",
                    options: Options = Options(), dims: Mapping[str, int] | None = None,
                    grad: bool = False, grad_inputs: Sequence[str] | bool = (),
                    strict_dims: bool = False, precision: str = "f32") -> Graph:
    """Lower one entry of a parsed program and run the pipeline up to `stage`:
    "ir" (lowering only), the name of a pipeline pass (the forward pipeline
    through it), "grad" (the gradient pass's output) or "opt" (everything).
    With grad=True the result also computes the
    gradient of the entry's first output (a scalar) with respect to every
    parameter and to `grad_inputs` (True: every float input), as outputs
    named `grad.<name>`. With strict_dims (the CLI's --dims), a name in `dims`
    that the entry has no dimension of is an error rather than ignored.
    `precision` bf16-mixed or f16-mixed rewrites the "opt" graph's dot products
    last (passes/precision.py)."""
    g = _lower(program, entry, options, dims, strict_dims)
    if stage == "ir":
        return verify(g)
    if stage in PASS_NAMES:
        return verify(optimize(g, until=stage))
    g = optimize(g)
    if grad:
        if grad_inputs is True:
            grad_inputs = [g.nodes[i].attrs["name"] for i in g.inputs
                           if g.nodes[i].tensor.dtype.is_float]
        g = verify(differentiate(g, grad_inputs or (), _entry_loc(program, entry)))
        if stage == "opt":
            g = optimize(g)
    return verify(apply_precision(g, precision) if stage == "opt" else g)


def _lower(program: ast.Program, entry: str, options: Options,
           dims: Mapping[str, int] | None, strict_dims: bool) -> Graph:
    g = lower(program, entry, options)
    if dims:
        if strict_dims:
            check_dim_names(g, dims)
        g = bind_dims(g, dims)
    return g


def compile_train_step(program: ast.Program, optimizer: OptimizerConfig, entry: str = "loss",
                       dims: Mapping[str, int] | None = None, float64: bool = False,
                       frozen: Collection[str] = (), strict_dims: bool = False,
                       stage: str = "opt", dropout: bool = True, precision: str = "f32"
                       ) -> Graph:
    """One whole training step of `entry` (a scalar loss) as a graph:
    forward in training mode, backward, gradient clipping and the optimizer
    update (passes/optim.py). `frozen` names parameters left untouched (no
    gradient is computed for them). stage "step" stops before the final
    optimization. dropout=False turns dropout off (for comparisons step by step)."""
    options = Options(train=True, float64=float64, dropout=dropout)
    g = optimize(_lower(program, entry, options, dims, strict_dims))
    g = differentiate(freeze(g, frozen), (), _entry_loc(program, entry))
    g = verify(train_step(g, optimizer))
    return g if stage == "step" else verify(apply_precision(optimize(g), precision))


def init_train_state(step: Graph, params: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The state a step graph reads: `params` (the model's parameters and
    buffers by state-dict name) and zeros for optimizer slots not in it."""
    state = dict(params)
    for n in walk_nodes(step):
        name = n.attrs.get("name") if n.op is Op.PARAM else None
        if name is not None and name.startswith("optim.") and name not in state:
            state[name] = np.zeros(tuple(int(d) for d in n.tensor.shape), n.tensor.dtype.np)
    return state


def step_scalars(optimizer: OptimizerConfig, lr: float, step: int,
                 float64: bool = False) -> dict[str, np.ndarray]:
    """The runtime scalar inputs of optimizer step `step` (1-based)."""
    dtype = np.float64 if float64 else np.float32
    return {f"optim.{k}": np.asarray(v, dtype)
            for k, v in optimizer.scalar_values(lr, step).items()}


def _entry_loc(program: ast.Program, entry: str) -> Loc | None:
    """Where the model defines its entry function."""
    for item in program.items:
        if isinstance(item, ast.LayerDef) and item.is_model:
            for m in item.members:
                if isinstance(m, ast.FnDef) and m.name == entry:
                    return m.loc
    return None


def grad_names(g: Graph) -> dict[str, str]:
    """Output name -> parameter or input name, for the gradient outputs."""
    return {o: o.removeprefix("grad.") for o in g.output_names if o.startswith("grad.")}


def complete_grads(grads: Mapping[str, np.ndarray], program: ast.Program,
                   options: Options = Options()) -> dict[str, np.ndarray]:
    """Gradients for the trainable part of the state dict (buffers have none):
    a declared parameter the entry never reads has a zero gradient (torch
    would leave its .grad as None)."""
    out = {}
    buffers = declared_buffers(program, options)
    for name, (t, _) in declared_params(program, options).items():
        if t.dtype.is_float and name not in buffers:
            out[name] = np.asarray(grads[name]) if name in grads else np.zeros(
                tuple(int(d) for d in t.shape), t.dtype.np)
    return out


def compile_file(path: str | Path, entry: str = "forward", **kw: Any) -> Graph:
    return compile_program(parse_file(path), entry, **kw)


def param_types(g: Graph) -> dict[str, TensorType]:
    """The parameters a compiled graph reads."""
    return g.params()


def model_params(program: ast.Program, options: Options = Options()
                 ) -> dict[str, tuple[TensorType, tuple[Any, ...]]]:
    """Every parameter the model declares (its state dict): (type, initializer)."""
    return declared_params(program, options)


def init_params(g: Graph, seed: int = 0) -> dict[str, np.ndarray]:
    """Fresh parameters for a graph, from each PARAM's declared initializer."""
    specs = {n.attrs["name"]: (n.tensor, n.attrs["init"])
             for n in walk_nodes(g) if n.op is Op.PARAM}
    return init.init_params(specs, seed)


def init_model_params(program: ast.Program, options: Options = Options(),
                      seed: int = 0) -> dict[str, np.ndarray]:
    """Fresh values for every declared parameter of the model."""
    return init.init_params(declared_params(program, options), seed)


def run(g: Graph, inputs: Mapping[str, np.ndarray], params: Mapping[str, np.ndarray],
        seed: int = 0, dims: Mapping[str, int] | None = None) -> dict[str, np.ndarray]:
    """Run a graph on the NumPy oracle; outputs by name."""
    missing = [name for name in g.input_names() if name not in inputs]
    if missing:
        raise DSLError(f"missing inputs: {', '.join(missing)}")
    outs = oracle.evaluate(g, dict(inputs), dict(params), seed, dict(dims or {}))
    return dict(zip(g.output_names, outs))
