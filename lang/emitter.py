"""The Emitter: builds one Graph while lowering one function body.

It owns the Builder, the lexical scope, and (for loop bodies) the link to the
enclosing emitter, through which outer tensors are captured as body inputs.
Builtins (lang/builtins.py) build IR only through this small API.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ember.ir.dtypes import DType
from ember.ir.graph import Builder, TensorType
from ember.ir.loc import DSLError, Loc
from ember.ir.ops import Op

from .values import Instance, Tensor, show_number


@dataclass(frozen=True)
class Options:
    """What the lowering is specialised for."""

    train: bool = False      # dropout active, batch norm uses batch statistics
    float64: bool = False    # f32 annotations mean float64 (oracle precision runs)
    dropout: bool = True     # in training mode; off for step-by-step comparisons


@dataclass
class Emitter:
    builder: Builder
    ctx: Any                                  # lower.Context (globals, options)
    instance: Instance | None
    vars: dict[str, Any] = field(default_factory=dict)
    outer: Emitter | None = None
    captures: list[tuple[Tensor, Tensor]] = field(default_factory=list)
    param_nodes: dict[str, Tensor] = field(default_factory=dict)
    step: Tensor | None = None                # this loop body's counter
    updates: dict[str, Tensor] = field(default_factory=dict)  # state name -> its new value

    # ---- building -------------------------------------------------------
    def add(self, op: Op, srcs: tuple[Tensor, ...] = (), attrs: dict[str, Any] | None = None,
            loc: Loc | None = None) -> Tensor:
        ids = tuple(s.id for s in srcs)
        return Tensor(self.builder.add(op, ids, attrs or {}, loc or self.ctx.loc))

    def type(self, t: Tensor) -> TensorType:
        return self.builder.type_of(t.id)

    def const(self, value: float | int | bool, dtype: DType, loc: Loc) -> Tensor:
        try:
            value = bool(value) if dtype is DType.BOOL else (
                float(value) if dtype.is_float else int(value))
        except OverflowError:
            raise DSLError(f"the constant {show_number(value)} does not fit in {dtype}",
                           loc) from None
        _check_range(value, dtype, loc)
        return self.add(Op.CONST, (), {"value": value, "dtype": dtype}, loc)

    @property
    def float_dtype(self) -> DType:
        return DType.F64 if self.ctx.options.float64 else DType.F32

    @property
    def train(self) -> bool:
        return bool(self.ctx.options.train)

    def new_stream(self, kind: str) -> str:
        """A random stream name: the function's name and a count of the
        streams lowered for that function name so far (inlining prefixes the
        instance path, so two instances of a layer differ)."""
        fn = self.function_name()
        count = self.ctx.streams.get(fn, 0)
        self.ctx.streams[fn] = count + 1
        return f"{fn}.{kind}{count}"

    def function_name(self) -> str:
        return self.outer.function_name() if self.outer else self.builder.name

    def loop_steps(self) -> tuple[Tensor, ...]:
        """The counters of the loops around this point, outermost first,
        captured into this body as needed."""
        if self.outer is None or self.step is None:
            return ()
        outer = self.outer.loop_steps()
        captured = tuple(self.capture(f"__step{k}", t) if f"__step{k}" not in self.vars
                         else self.vars[f"__step{k}"] for k, t in enumerate(outer))
        return captured + (self.step,)

    # ---- names ----------------------------------------------------------
    def lookup(self, name: str, loc: Loc, extra: Callable[[], list[str]] = list) -> Any:
        found = self.find(name)
        if found is MISSING:
            raise DSLError(f"unknown name '{name}'", loc, _suggest(name, self.visible() + extra()))
        return found

    def find(self, name: str) -> Any:
        if name in self.vars:
            return self.vars[name]
        if self.outer is not None:
            v = self.outer.find(name)
            if isinstance(v, Tensor):
                v = self.capture(name, v)
            return v
        if self.instance is not None and name in self.instance.params:
            return self.param(name)
        if self.instance is not None and name in self.instance.scope:
            return self.instance.scope[name]
        return self.ctx.globals.get(name, MISSING)

    def param(self, name: str) -> Tensor:
        """The PARAM node for a parameter of this instance (one per graph)."""
        from .params import param_node
        assert self.instance is not None, "parameters live in layer instances"
        if name not in self.param_nodes:
            self.param_nodes[name] = param_node(self, self.instance.params[name])
        return self.param_nodes[name]

    def param_name(self, t: Tensor) -> str | None:
        """The state-dict name of t when it is a parameter or buffer read here."""
        node = self.builder.nodes[t.id]
        return node.attrs["name"] if node.op is Op.PARAM else None

    def buffer_name(self, t: Tensor) -> str | None:
        """The state-dict name of t when it is a buffer read here."""
        node = self.builder.nodes[t.id]
        return node.attrs["name"] if node.op is Op.PARAM and node.attrs.get("buffer") else None

    def update_state(self, name: str, value: Tensor, loc: Loc) -> None:
        """Record a new value for a buffer (batch norm's running statistics);
        the entry returns it as the output `new.<name>`. Updates are sequential
        in PyTorch (a layer called twice updates twice, the second from the
        first); one value per step here, so a second update is refused."""
        if self.outer is not None:
            raise DSLError(f"'{name}' is updated inside a loop; a training-mode batch norm "
                           f"must be outside 'for t in range(...)' loops", loc)
        if name in self.updates:
            raise DSLError(f"'{name}' is updated twice in one step (a batch-norm layer "
                           f"called twice in training mode); call each once", loc)
        self.updates[name] = value

    def capture(self, name: str, outer: Tensor) -> Tensor:
        """Make an outer tensor visible in a loop body as a new body input."""
        assert self.outer is not None, "only loop bodies capture"
        t = self.outer.type(outer)
        inner = self.add(Op.INPUT, (), {"name": name, "shape": t.shape, "dtype": t.dtype})
        self.captures.append((outer, inner))
        self.vars[name] = inner
        return inner

    def visible(self) -> list[str]:
        names = list(self.vars)
        if self.outer is not None:
            names += self.outer.visible()
        if self.instance is not None:
            names += list(self.instance.scope) + list(self.instance.params)
        return names + list(self.ctx.globals)


def _check_range(value: float | int | bool, dtype: DType, loc: Loc) -> None:
    """A finite number outside the dtype's range would wrap, or silently become inf."""
    if dtype is DType.BOOL or not math.isfinite(value):
        return
    if dtype.is_int:
        ii = np.iinfo(dtype.np)
        inside, shown = ii.min <= value <= ii.max, f"[{ii.min}, {ii.max}]"
    else:
        top = float(np.finfo(dtype.np).max)
        inside, shown = -top <= value <= top, f"[{-top:.5g}, {top:.5g}]"
    if not inside:
        raise DSLError(f"the constant {value} does not fit in {dtype} {shown}", loc)


class _Missing:
    pass


MISSING = _Missing()


def _suggest(name: str, candidates: list[str]) -> str:
    close = difflib.get_close_matches(name, sorted(set(candidates)), n=1, cutoff=0.6)
    return f"did you mean '{close[0]}'?" if close else ""
