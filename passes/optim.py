"""optim: the training step as a pure Graph -> Graph pass.

`train_step(g, config)` takes the gradient pass's output (the loss, the
forward's other outputs such as batch norm's `new.<buffer>`, and `grad.<p>`
per trainable parameter) and returns one graph for a whole optimizer step:

    inputs   the data, and runtime scalars `optim.lr` (and for Adam/AdamW
             `optim.step_size`, `optim.bias_correction2_sqrt`), so a learning
             rate schedule never regenerates code
    params   the model's parameters and buffers, and the optimizer state as
             parameters named `optim.<param>.<slot>` (zeros before step 1)
    outputs  `loss`, `grad_norm` (the global L2 norm before clipping), and
             `new.<name>` for every parameter, buffer and optimizer slot the
             step changes; the host replaces each state entry with its `new.`

The update formulas are torch.optim's single-tensor ones, operation for
operation (the same epsilon placement, lerp for Adam's first moment, the
bias corrections computed on the host as torch does in Python), so a float64
step agrees with torch to rounding. A parameter without a gradient (one the
loss never reads, or a frozen one) is left alone, as torch skips `.grad is None`.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass, replace

from ember.ir.dtypes import DType
from ember.ir.graph import Builder, Graph, Node
from ember.ir.loc import UNKNOWN, DSLError
from ember.ir.ops import Op

from .rewrite import copy_node, map_bodies, map_graph
from .vjp import Emit

OPTIMIZERS = ("sgd", "adam", "adamw")
CLIP_EPS = 1e-6  # torch.nn.utils.clip_grad_norm_: max_norm / (total_norm + 1e-6)


@dataclass(frozen=True)
class OptimizerConfig:
    """torch.optim's hyperparameters; the learning rate is a runtime input."""

    name: str = "adamw"
    momentum: float = 0.0             # SGD
    nesterov: bool = False            # SGD
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    weight_decay: float = 0.0         # L2 in the gradient (SGD, Adam); decoupled (AdamW)
    clip: float | None = None         # max global gradient norm

    def __post_init__(self) -> None:
        problem = self._problem()
        if problem:
            raise DSLError(f"optimizer {self.name}: {problem}")

    def _problem(self) -> str:
        if self.name not in OPTIMIZERS:
            return f"unknown optimizer; expected one of {', '.join(OPTIMIZERS)}"
        if not 0 <= self.momentum < 1 or (self.nesterov and self.momentum == 0):
            return "momentum must be in [0, 1), and positive for Nesterov"
        if not all(0 <= b < 1 for b in self.betas) or not self.eps > 0:
            return "betas must be in [0, 1) and eps positive"
        if not self.weight_decay >= 0 or (self.clip is not None and not self.clip > 0):
            return "weight decay must be >= 0 and the clipping norm positive"
        return ""

    @property
    def slots(self) -> tuple[str, ...]:
        """The optimizer state kept per parameter, as torch names it."""
        if self.name == "sgd":
            return ("momentum_buffer",) if self.momentum else ()
        return ("exp_avg", "exp_avg_sq")

    @property
    def scalars(self) -> tuple[str, ...]:
        """The runtime scalars a step reads (`optim.<name>` inputs)."""
        adam = ("step_size", "bias_correction2_sqrt") if self.name != "sgd" else ()
        return ("lr", *adam)

    def scalar_values(self, lr: float, step: int) -> dict[str, float]:
        """The scalars for optimizer step `step` (1-based) at learning rate lr,
        computed in Python floats as torch.optim computes them."""
        values = {"lr": lr}
        if self.name != "sgd":
            beta1, beta2 = self.betas
            values["step_size"] = lr / (1 - beta1 ** step)
            values["bias_correction2_sqrt"] = (1 - beta2 ** step) ** 0.5
        return values


def freeze(g: Graph, names: Collection[str]) -> Graph:
    """g with the parameters `names` marked frozen: the gradient pass then
    computes nothing for them, and the optimizer never touches them."""
    if not names:
        return g
    declared = {n.attrs["name"] for n in g.nodes if n.op is Op.PARAM}
    unknown = sorted(set(names) - declared)
    if unknown:
        raise DSLError(f"cannot freeze '{unknown[0]}': '{g.name}' reads no parameter of "
                       f"that name")

    def visit(b: Builder, n: Node, srcs: tuple[int, ...]) -> int:
        if n.op is Op.PARAM and n.attrs["name"] in names:
            n = replace(n, attrs={**n.attrs, "frozen": True})
        return copy_node(b, n, srcs)
    return map_graph(map_bodies(g, lambda body: freeze(body, names)), visit)


def train_step(g: Graph, config: OptimizerConfig) -> Graph:
    """The gradient graph g turned into one optimizer step (module docstring)."""
    b = Builder(g.name)
    vals: list[int] = []
    for n in g.nodes:
        vals.append(copy_node(b, n, tuple(vals[s] for s in n.srcs)))
    loss = g.nodes[g.outputs[0]]
    e = Emit(b, loss.loc)
    forward = {name: vals[o] for name, o in zip(g.output_names, g.outputs)}
    grads = {name.removeprefix("grad."): forward.pop(name) for name in list(forward)
             if name.startswith("grad.")}
    # torch skips a parameter whose .grad is None (the loss never reads it)
    grads = {k: v for k, v in grads.items() if not _is_zeros(b.nodes[v])}
    scalars = [e(Op.INPUT, name=f"optim.{k}", shape=(), dtype=loss.tensor.dtype)
               for k in config.scalars]
    norm = global_norm(e, list(grads.values()), loss.tensor.dtype)
    outs = {"loss": forward.pop(g.output_names[0]), "grad_norm": norm, **forward}
    if grads:
        if config.clip is not None:
            scalars.append(clip_coefficient(e, norm, config.clip))
        params = {n.attrs["name"]: vals[i] for i, n in enumerate(g.nodes) if n.op is Op.PARAM}
        outs.update(_update_all(e, config, params, grads, scalars))
    inputs = (*(vals[i] for i in g.inputs), *scalars[:len(config.scalars)])
    return b.build(inputs, tuple(outs.values()), tuple(outs))


def _is_zeros(n: Node) -> bool:
    return n.op is Op.FULL and n.attrs["value"] == 0


def _update_all(e: Emit, config: OptimizerConfig, params: dict[str, int],
                grads: dict[str, int], scalars: list[int]) -> dict[str, int]:
    """Every parameter's update as one foreach op (one multi-tensor kernel):
    group k is (param, grad, slots...) of the k-th parameter."""
    srcs: list[int] = []
    for name, grad in grads.items():
        srcs += [params[name], grad, *(_slot(e, name, s, params[name]) for s in config.slots)]
    dtype = e.type(next(iter(grads.values()))).dtype
    body = update_region(config, dtype, len(scalars))
    # result j may be stored over operand k: the new parameter and slots over the old
    donate = ((0, 0), *((1 + j, 2 + j) for j in range(len(config.slots))))
    node = e(Op.FOREACH, *srcs, *scalars, body=body, groups=len(grads),
             arity=2 + len(config.slots), donate=donate)
    outs, k = {}, 0
    for name in grads:
        for key in (f"new.{name}", *(f"new.optim.{name}.{s}" for s in config.slots)):
            outs[key], k = e(Op.GET, node, index=k), k + 1
    return outs


def update_region(config: OptimizerConfig, dtype: DType, n_scalars: int) -> Graph:
    """One element's update: (param, grad, slots..., scalars..., [clip
    coefficient]) -> (new param, new slots...), all 0-d."""
    b = Builder(f"{config.name}_update")
    e = Emit(b, UNKNOWN)

    def scalar(name: str) -> int:
        return e(Op.INPUT, name=name, shape=(), dtype=dtype)
    p, g = scalar("param"), scalar("grad")
    state = {s: scalar(s) for s in config.slots}
    s = {k: scalar(k) for k in config.scalars}
    if n_scalars > len(config.scalars):   # clipping: the gradient times min(c / norm, 1)
        coef = scalar("clip_coef")
        g = e(Op.MUL, g, coef)
    new_p, new_state = UPDATES[config.name](e, config, s, p, g, state)
    inputs = [i for i, n in enumerate(b.nodes) if n.op is Op.INPUT]
    outputs = (new_p, *(new_state[k] for k in config.slots))
    return b.build(tuple(inputs), outputs, ("param", *config.slots))


def _slot(e: Emit, param: str, slot: str, like: int) -> int:
    t = e.type(like)
    return e(Op.PARAM, name=f"optim.{param}.{slot}", shape=t.shape, dtype=t.dtype,
             init=("zeros",), buffer=True)


def global_norm(e: Emit, grads: list[int], dtype: DType) -> int:
    """sqrt of the sum of every gradient element squared (0 with no gradients),
    the sum as one summing foreach over all the gradients."""
    if not grads:
        return e(Op.CONST, value=0.0, dtype=dtype)
    b = Builder("square")
    x = b.add(Op.INPUT, (), {"name": "grad", "shape": (), "dtype": dtype})
    square = b.build((x,), (b.add(Op.MUL, (x, x)),), ("square",))
    total = e(Op.FOREACH, *grads, body=square, groups=len(grads), arity=1, reduce=True)
    return e(Op.SQRT, e(Op.GET, total, index=0))


def clip_coefficient(e: Emit, norm: int, max_norm: float) -> int:
    """torch.nn.utils.clip_grad_norm_'s factor min(max_norm / (norm + 1e-6), 1)."""
    coef = e(Op.DIV, e.const(max_norm, norm), e(Op.ADD, norm, e.const(CLIP_EPS, norm)))
    return e(Op.MINIMUM, coef, e.const(1.0, norm))


Scalars = dict[str, int]
Update = Callable[[Emit, OptimizerConfig, Scalars, int, int, dict[str, int]],
                  tuple[int, dict[str, int]]]


def _sgd(e: Emit, c: OptimizerConfig, s: Scalars, p: int, g: int,
         state: dict[str, int]) -> tuple[int, dict[str, int]]:
    """torch.optim.SGD (dampening 0). The momentum buffer starts at zeros,
    so step 1 gives momentum * 0 + g = g, torch's clone of the gradient."""
    if c.weight_decay:
        g = e(Op.ADD, g, _scaled(e, p, c.weight_decay))
    new_state = {}
    if c.momentum:
        buf = e(Op.ADD, _scaled(e, state["momentum_buffer"], c.momentum), g)
        new_state["momentum_buffer"] = buf
        g = e(Op.ADD, g, _scaled(e, buf, c.momentum)) if c.nesterov else buf
    return e(Op.SUB, p, e(Op.MUL, g, s["lr"])), new_state


def _adam(e: Emit, c: OptimizerConfig, s: Scalars, p: int, g: int,
          state: dict[str, int]) -> tuple[int, dict[str, int]]:
    """torch.optim.Adam, or AdamW (decoupled decay) when c.name is adamw."""
    beta1, beta2 = c.betas
    if c.weight_decay and c.name == "adamw":   # param.mul_(1 - lr * weight_decay)
        decay = e(Op.SUB, e.const(1.0, p), _scaled(e, s["lr"], c.weight_decay))
        p = e(Op.MUL, p, decay)
    elif c.weight_decay:                       # grad.add(param, alpha=weight_decay)
        g = e(Op.ADD, g, _scaled(e, p, c.weight_decay))
    m = _lerp(e, state["exp_avg"], g, 1.0 - beta1)
    v = e(Op.ADD, _scaled(e, state["exp_avg_sq"], beta2),
          e(Op.MUL, _scaled(e, g, 1.0 - beta2), g))
    denom = e(Op.ADD, e(Op.DIV, e(Op.SQRT, v), s["bias_correction2_sqrt"]), e.const(c.eps, p))
    step = e(Op.DIV, e(Op.MUL, e(Op.NEG, s["step_size"]), m), denom)
    return e(Op.ADD, p, step), {"exp_avg": m, "exp_avg_sq": v}


def _scaled(e: Emit, x: int, k: float) -> int:
    return e(Op.MUL, x, e.const(k, x))


def _lerp(e: Emit, start: int, end: int, w: float) -> int:
    """torch.lerp's two-sided formula, exact at both ends."""
    diff = e(Op.SUB, end, start)
    if abs(w) < 0.5:
        return e(Op.ADD, start, _scaled(e, diff, w))
    return e(Op.SUB, end, _scaled(e, diff, 1.0 - w))


UPDATES: dict[str, Update] = {"sgd": _sgd, "adam": _adam, "adamw": _adam}
