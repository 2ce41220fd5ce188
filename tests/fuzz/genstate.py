"""The state of one model being generated: its values, inputs, parameters and lines.

`Gen` hands out fresh names and leaves (inputs and parameters), picks operands
and records `let` statements with the shape each one has; the ops of gen.py
build on it. A `Var` knows its static shape and whether its axis 0 is the
symbolic batch dim `B` (bound to `Gen.batch` when the model runs).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field

SIZES = (1, 1, 2, 3, 4, 5, 7)


@dataclass
class Var:
    name: str
    shape: tuple[int, ...]
    sym: bool = False  # axis 0 is the symbolic batch dim B
    is_input: bool = False  # exact in every precision: discrete ops may read it

    @property
    def rank(self) -> int:
        return len(self.shape)

    def static_axes(self) -> list[int]:
        """Axes whose size is a known int (all but a symbolic batch axis)."""
        return [k for k in range(self.rank) if k or not self.sym]


@dataclass
class Program:
    """A generated model: its source, the dims to run it with, and the mode."""

    src: str
    dims: dict[str, int]
    train: bool


@dataclass
class Gen:
    rng: random.Random
    batch: int
    train: bool
    inputs: list[tuple[Var, str]] = field(default_factory=list)
    params: list[str] = field(default_factory=list)
    helpers: list[str] = field(default_factory=list)
    lines: list[str] = field(default_factory=list)
    vals: list[Var] = field(default_factory=list)
    used: set[str] = field(default_factory=set)

    # ---- names, leaves and shapes ----------------------------------------------

    def fresh(self, prefix: str) -> str:
        made = len(self.inputs) + len(self.params) + len(self.lines) + len(self.helpers)
        return f"{prefix}{made}"

    def type_of(self, v: Var, dtype: str = "f32") -> str:
        dims = ["B" if k == 0 and v.sym else str(d) for k, d in enumerate(v.shape)]
        return f"{dtype}[{', '.join(dims)}]"

    def input(self, shape: tuple[int, ...], sym: bool, dtype: str = "f32") -> Var:
        v = Var(self.fresh("x"), shape, sym, is_input=True)
        self.inputs.append((v, dtype))
        if dtype == "f32":
            self.vals.append(v)
        return v

    def param(self, shape: tuple[int, ...], init: str = "normal(0.5)") -> Var:
        v = Var(self.fresh("p"), shape)
        self.params.append(f"param {v.name}: {self.type_of(v)} = {init}")
        return v

    def leaf(self, shape: tuple[int, ...], sym: bool) -> Var:
        """A new input or parameter of this shape (a parameter cannot hold B)."""
        if sym or self.rng.random() < 0.5:
            return self.input(shape, sym)
        return self.param(shape)

    def shape(self, rank: int) -> tuple[int, ...]:
        return tuple(self.rng.choice(SIZES) for _ in range(rank))

    def pick(self, ok: Callable[[Var], bool] = lambda v: True) -> Var | None:
        cands = [v for v in self.vals if ok(v)]
        if not cands:
            return None
        # favour recent values so chains grow deep
        v = cands[-1] if self.rng.random() < 0.4 else self.rng.choice(cands)
        self.used.add(v.name)
        return v

    def let(self, expr: str, shape: tuple[int, ...], sym: bool) -> Var:
        v = Var(self.fresh("v"), tuple(shape), sym)
        self.lines.append(f"let {v.name} = {expr}")
        self.vals.append(v)
        return v

    def partner(self, a: Var) -> Var:
        """Another value broadcasting with `a`: an existing one of the same shape or a
        new leaf with some dims set to 1 and maybe fewer leading dims."""
        same = [v for v in self.vals if v.shape == a.shape and v.sym == a.sym and v is not a]
        if same and self.rng.random() < 0.5:
            v = self.rng.choice(same)
            self.used.add(v.name)
            return v
        drop = self.rng.randint(0, a.rank) if self.rng.random() < 0.3 else 0
        shape = tuple(1 if self.rng.random() < 0.3 else d for d in a.shape[drop:])
        sym = a.sym and drop == 0 and shape[:1] == a.shape[:1]
        if a.sym and drop == 0 and not sym:
            shape = (1, *shape[1:])
        return self.leaf(shape, sym)

    def partner_shape(self, a: Var) -> tuple[int, ...]:
        return tuple(
            d if self.rng.random() < 0.7 or (k == 0 and a.sym) else 1 for k, d in enumerate(a.shape)
        )

    # ---- the program -----------------------------------------------------------

    def source(self) -> str:
        outs = [v for v in self.vals if not v.is_input and v.name not in self.used][-3:]
        outs = outs or [self.vals[-1]]
        args = ", ".join(f"{v.name}: {self.type_of(v, dt)}" for v, dt in self.inputs)
        body = "\n    ".join(self.lines + [f"return {', '.join(v.name for v in outs)}"])
        members = self.params + self.helpers + [f"def forward({args}) {{\n    {body}\n  }}"]
        return "model Fuzz {\n  " + "\n  ".join(members) + "\n}\n"


def broadcast_shape(a: Var, b: Var) -> tuple[tuple[int, ...], bool]:
    rank = max(a.rank, b.rank)
    pa, pb = (1,) * (rank - a.rank) + a.shape, (1,) * (rank - b.rank) + b.shape
    shape = tuple(max(x, y) for x, y in zip(pa, pb))
    sym = (a.sym and a.rank == rank) or (b.sym and b.rank == rank)
    return shape, sym
