"""A generator of valid random Ember models, from the grammar and the builtin table.

`generate(seed)` writes one `model Fuzz` whose `forward` chains random `let`
statements: elementwise ops with broadcasting, reductions, matmul, conv2d and
pooling, movement (permute, reshape, slicing, indexing, concat, split, ...),
normalizations, embeddings, losses, dropout, helper-function calls and `for`
loops with a carried state. Shapes are random with many size-1 and odd sizes; the
batch axis is sometimes the symbolic `B`. Each op knows its own shape rule here,
so every generated model is well typed: a compile error on one is a finding.

Two choices keep the differential comparison honest rather than noisy:
* values stay O(1) (arguments of exp, log, sqrt and division are squashed first),
  so float32 results can be compared with a fixed relative tolerance;
* discontinuous ops (comparisons, argmax) read only model inputs, which are
  exact in every precision, so float32 rounding never flips a branch.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field

SIZES = (1, 1, 2, 3, 4, 5, 7)
UNARY = ("exp(tanh({a}))", "log(1.0 + abs({a}))", "sqrt(abs({a}) + 0.5)", "rsqrt(abs({a}) + 0.5)",
         "abs({a})", "relu({a})", "sigmoid({a})", "tanh({a})", "erf({a})", "gelu({a})", "-{a}",
         "neg({a})", "{a} * 0.5", "tanh({a}) ** 2", "(abs({a}) + 0.5) ** 1.5", "{a} - 1",
         "2.0 * {a}")
BINARY = ("{a} + {b}", "{a} - {b}", "{a} * {b}", "{a} / (1.0 + abs({b}))", "maximum({a}, {b})",
          "minimum({a}, {b})", "add({a}, {b})", "mul({a}, {b})")
COMPARE = ("<", "<=", ">", ">=", "==", "!=")


@dataclass
class Var:
    name: str
    shape: tuple[int, ...]
    sym: bool = False      # axis 0 is the symbolic batch dim B
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

    # ---- ops: each adds one statement, or returns False if nothing fits -------

    def unary(self) -> bool:
        a = self.pick()
        if a is None:
            return False
        self.let(self.rng.choice(UNARY).format(a=a.name), a.shape, a.sym)
        return True

    def binary(self) -> bool:
        a = self.pick()
        if a is None:
            return False
        b = self.partner(a)
        x, y = (a, b) if self.rng.random() < 0.7 else (b, a)
        shape, sym = _broadcast(x, y)
        self.let(self.rng.choice(BINARY).format(a=x.name, b=y.name), shape, sym)
        return True

    def where(self) -> bool:
        a = self.pick()
        if a is None:
            return False
        c = self.input(self.partner_shape(a), a.sym)
        b = self.partner(a)
        shape, sym = _broadcast(*_broadcast_vars(a, b, c))
        cond = f"{c.name} {self.rng.choice(COMPARE)} {self.rng.choice(('0.0', '0.3', '-0.5'))}"
        if self.rng.random() < 0.3:
            cond = f"logical_not({cond})" if self.rng.random() < 0.5 else \
                f"logical_and({cond}, {c.name} < 1.0)"
        self.let(f"where({cond}, {a.name}, {b.name})", shape, sym)
        return True

    def partner_shape(self, a: Var) -> tuple[int, ...]:
        return tuple(d if self.rng.random() < 0.7 or (k == 0 and a.sym) else 1
                     for k, d in enumerate(a.shape))

    def reduce(self) -> bool:
        a = self.pick(lambda v: v.rank >= 1)
        if a is None:
            return False
        fn = self.rng.choice(("sum", "mean", "max", "min"))
        keep = self.rng.random() < 0.4
        if self.rng.random() < 0.15:
            self.let(f"{fn}({a.name})", (), False)
            return True
        axis = self.rng.randrange(a.rank)
        spelled = axis - a.rank if self.rng.random() < 0.3 else axis
        shape = a.shape[:axis] + ((1,) if keep else ()) + a.shape[axis + 1:]
        sym = a.sym and axis != 0
        self.let(f"{fn}({a.name}, axis={spelled}, keepdims={str(keep).lower()})", shape, sym)
        return True

    def argmax(self) -> bool:
        inputs = [v for v, dt in self.inputs if dt == "f32" and v.rank >= 1]
        if not inputs:
            return False
        a = self.rng.choice(inputs)
        axis = self.rng.randrange(a.rank)
        self.let(f"to_float(argmax({a.name}, axis={axis}))",
                 a.shape[:axis] + a.shape[axis + 1:], a.sym and axis != 0)
        return True

    def matmul(self) -> bool:
        a = self.pick(lambda v: v.rank >= 2 and v.rank - 1 in v.static_axes())
        if a is None:
            return False
        k, n = a.shape[-1], self.rng.choice(SIZES)
        w = self.param((k, n)) if self.rng.random() < 0.7 else self.leaf((*a.shape[:-2], k, n),
                                                                        a.sym and a.rank > 2)
        self.let(f"{a.name} @ {w.name}", (*a.shape[:-1], n), a.sym)
        return True

    def conv(self) -> bool:
        a = self.pick(lambda v: v.rank == 4)
        if a is None:
            return False
        _, c, h, wd = a.shape
        g = self.rng.choice([d for d in range(1, c + 1) if c % d == 0])
        o = g * self.rng.randint(1, 2)
        stride, pad, dil = (self.rng.randint(1, 2) for _ in range(3))
        most = [max(1, min(3, (s + 2 * pad - 1) // dil + 1)) for s in (h, wd)]
        kh, kw = (self.rng.randint(1, k) for k in most)
        oh, ow = (_window(s, k, stride, pad, dil) for s, k in ((h, kh), (wd, kw)))
        if min(oh, ow) < 1:
            return False
        w = self.param((o, c // g, kh, kw))
        self.let(f"conv2d({a.name}, {w.name}, stride={stride}, padding=({pad}, {pad}), "
                 f"dilation={dil}, groups={g})", (a.shape[0], o, oh, ow), a.sym)
        return True

    def pool(self) -> bool:
        a = self.pick(lambda v: v.rank == 4)
        if a is None:
            return False
        kh, kw = self.rng.randint(1, 3), self.rng.randint(1, 3)
        ph, pw = self.rng.randint(0, kh // 2), self.rng.randint(0, kw // 2)
        sh, sw = self.rng.randint(1, kh), self.rng.randint(1, kw)
        oh, ow = _window(a.shape[2], kh, sh, ph, 1), _window(a.shape[3], kw, sw, pw, 1)
        if min(oh, ow) < 1:
            return False
        fn = self.rng.choice(("max_pool2d", "avg_pool2d"))
        self.let(f"{fn}({a.name}, ({kh}, {kw}), stride=({sh}, {sw}), padding=({ph}, {pw}))",
                 (a.shape[0], a.shape[1], oh, ow), a.sym)
        return True

    def permute(self) -> bool:
        a = self.pick(lambda v: v.rank >= 2)
        if a is None:
            return False
        perm = list(range(a.rank))
        head = perm[1:] if a.sym else perm
        self.rng.shuffle(head)
        perm = [0, *head] if a.sym else head
        if self.rng.random() < 0.3:
            perm = list(range(a.rank))
            perm[-2], perm[-1] = perm[-1], perm[-2]
            if a.rank == 2 and a.sym:
                return False
            expr = f"transpose({a.name})"
        else:
            expr = f"permute({a.name}, {', '.join(map(str, perm))})"
        self.let(expr, tuple(a.shape[p] for p in perm), a.sym)
        return True

    def reshape(self) -> bool:
        a = self.pick()
        if a is None:
            return False
        head = ["B"] if a.sym else []
        n = math.prod(a.shape[1:] if a.sym else a.shape)
        target = _factorize(self.rng, n)
        spelled = [str(d) for d in target]
        if target and self.rng.random() < 0.3:
            spelled[self.rng.randrange(len(spelled))] = "-1"
        if not head + spelled:
            return False
        self.let(f"reshape({a.name}, {', '.join(head + spelled)})",
                 (*(a.shape[:1] if a.sym else ()), *target), a.sym)
        return True

    def slice(self) -> bool:
        a = self.pick(lambda v: bool(v.static_axes()))
        if a is None:
            return False
        axis = self.rng.choice(a.static_axes())
        size = a.shape[axis]
        if self.rng.random() < 0.3:
            k = self.rng.randrange(-size, size)
            self.let(f"{a.name}[{_subscript(a.rank, axis, str(k))}]",
                     a.shape[:axis] + a.shape[axis + 1:], a.sym and axis != 0)
            return True
        start, stop = self.rng.randint(-size, size), self.rng.randint(-size, size + 2)
        step = self.rng.randint(1, 3)
        length = len(range(*slice(start, stop, step).indices(size)))
        if length < 1:
            return False
        text = f"{start}:{stop}" + (f":{step}" if step > 1 else "")
        self.let(f"{a.name}[{_subscript(a.rank, axis, text)}]",
                 a.shape[:axis] + (length,) + a.shape[axis + 1:], a.sym)
        return True

    def unsqueeze(self) -> bool:
        a = self.pick(lambda v: v.rank < 5)
        if a is None:
            return False
        axis = self.rng.randint(1 if a.sym else 0, a.rank)
        shape = a.shape[:axis] + (1,) + a.shape[axis:]
        if self.rng.random() < 0.5:
            self.let(f"unsqueeze({a.name}, {axis})", shape, a.sym)
        else:
            self.let(f"{a.name}[{_subscript(a.rank, axis, 'None', insert=True)}]", shape, a.sym)
        return True

    def squeeze(self) -> bool:
        a = self.pick(lambda v: any(v.shape[k] == 1 for k in v.static_axes()))
        if a is None:
            return False
        axis = self.rng.choice([k for k in a.static_axes() if a.shape[k] == 1])
        self.let(f"squeeze({a.name}, {axis})", a.shape[:axis] + a.shape[axis + 1:],
                 a.sym and axis != 0)
        return True

    def concat(self) -> bool:
        a = self.pick(lambda v: bool(v.static_axes()))
        if a is None:
            return False
        axis = self.rng.choice(a.static_axes())
        other = a.shape[:axis] + (self.rng.choice(SIZES),) + a.shape[axis + 1:]
        b = self.leaf(other, a.sym)
        shape = a.shape[:axis] + (a.shape[axis] + other[axis],) + a.shape[axis + 1:]
        self.let(f"concat({a.name}, {b.name}, axis={axis})", shape, a.sym)
        return True

    def split(self) -> bool:
        a = self.pick(lambda v: any(v.shape[k] % 2 == 0 for k in v.static_axes()))
        if a is None:
            return False
        axis = self.rng.choice([k for k in a.static_axes() if a.shape[k] % 2 == 0])
        half = a.shape[:axis] + (a.shape[axis] // 2,) + a.shape[axis + 1:]
        first, second = Var(self.fresh("v"), half, a.sym), Var(self.fresh("v") + "b", half, a.sym)
        self.lines.append(f"let {first.name}, {second.name} = split({a.name}, 2, axis={axis})")
        self.vals += [first, second]
        return True

    def broadcast(self) -> bool:
        a = self.pick(lambda v: any(v.shape[k] == 1 for k in v.static_axes()))
        if a is None:
            return False
        shape = tuple(self.rng.choice(SIZES) if d == 1 and (k or not a.sym) else d
                      for k, d in enumerate(a.shape))
        dims = ["B" if k == 0 and a.sym else str(d) for k, d in enumerate(shape)]
        self.let(f"broadcast({a.name}, {', '.join(dims)})", shape, a.sym)
        return True

    def normalize(self) -> bool:
        a = self.pick(lambda v: v.rank >= 1 and v.rank - 1 in v.static_axes())
        if a is None:
            return False
        axis = self.rng.choice([-1, a.rank - 1])
        kind = self.rng.choice(("softmax", "log_softmax", "layer_norm", "batch_norm"))
        if kind == "layer_norm":
            w, b = self.param(a.shape[-1:]), self.param(a.shape[-1:])
            expr = f"layer_norm({a.name}, {w.name}, {b.name})"
        elif kind == "batch_norm" and a.rank >= 2 and 1 in a.static_axes():
            c = a.shape[1:2]
            names = [self.param(c).name, self.param(c).name, self.param(c).name,
                     self.param(c, "ones").name]
            expr = f"batch_norm({a.name}, {', '.join(names)})"
        else:
            expr = f"{self.rng.choice(('softmax', 'log_softmax'))}({a.name}, axis={axis})"
        self.let(expr, a.shape, a.sym)
        return True

    def dropout(self) -> bool:
        a = self.pick()
        if a is None:
            return False
        self.let(f"dropout({a.name}, p={self.rng.choice((0.1, 0.5, 0.0))})", a.shape, a.sym)
        return True

    def embedding(self) -> bool:
        sym = self.rng.random() < 0.5
        ids_shape = ((self.batch,) if sym else ()) + self.shape(self.rng.randint(0, 2))
        rows, d = self.rng.choice(SIZES), self.rng.choice(SIZES)
        ids = self.input(ids_shape, sym, "i32")
        if self.rng.random() < 0.5:
            table = self.param((rows, d))
            self.let(f"embedding({table.name}, {ids.name})", (*ids_shape, d), sym)
        else:
            self.let(f"one_hot({ids.name}, {rows})", (*ids_shape, rows), sym)
        return True

    def loss(self) -> bool:
        a = self.pick(lambda v: v.rank >= 1 and v.rank - 1 in v.static_axes())
        if a is None:
            return False
        if self.rng.random() < 0.5:
            labels = self.input(a.shape[:-1], a.sym and a.rank > 1, "i32")
            self.let(f"cross_entropy({a.name}, {labels.name})", (), False)
        else:
            self.let(f"mse({a.name}, {self.partner(a).name})", (), False)
        return True

    def loop(self) -> bool:
        a = self.pick(lambda v: v.rank == 2 and 1 in v.static_axes())
        if a is None:
            sym = self.rng.random() < 0.5
            a = self.input((self.batch if sym else self.rng.choice(SIZES),
                            self.rng.choice(SIZES)), sym)
        n, steps = a.shape[1], self.rng.randint(1, 4)
        w = self.param((n, n), "normal(0.3)")
        seq = self.input((a.shape[0], steps, n), a.sym)
        h = self.let(f"tanh({a.name})", a.shape, a.sym)
        body = f"tanh({h.name} @ {w.name} + {seq.name}[:, t, :])"
        if self.rng.random() < 0.4:
            body = f"dropout({body}, p=0.2)"
        self.lines.append(f"for t in range({steps}) {{\n      {h.name} = {body}\n    }}")
        return True

    def call(self) -> bool:
        a = self.pick()
        if a is None:
            return False
        fn = self.fresh("f")
        body = self.rng.choice(UNARY).format(a="a")
        self.helpers.append(f"def {fn}(a: {self.type_of(a)}) -> {self.type_of(a)} "
                            f"{{ return {body} }}")
        self.let(f"{fn}({a.name})", a.shape, a.sym)
        return True

    # ---- the program -----------------------------------------------------------

    def source(self) -> str:
        outs = [v for v in self.vals if not v.is_input and v.name not in self.used][-3:]
        outs = outs or [self.vals[-1]]
        args = ", ".join(f"{v.name}: {self.type_of(v, dt)}" for v, dt in self.inputs)
        body = "\n    ".join(self.lines + [f"return {', '.join(v.name for v in outs)}"])
        members = self.params + self.helpers + [f"def forward({args}) {{\n    {body}\n  }}"]
        return "model Fuzz {\n  " + "\n  ".join(members) + "\n}\n"


OPS: list[tuple[float, Callable[[Gen], bool]]] = [
    (4, Gen.unary), (4, Gen.binary), (1.5, Gen.where), (2, Gen.reduce), (0.7, Gen.argmax),
    (2, Gen.matmul), (1.5, Gen.conv), (1, Gen.pool), (1, Gen.permute), (1.5, Gen.reshape),
    (1.5, Gen.slice), (1, Gen.unsqueeze), (0.7, Gen.squeeze), (1, Gen.concat), (0.7, Gen.split),
    (0.7, Gen.broadcast), (1.2, Gen.normalize), (1.2, Gen.dropout), (0.8, Gen.embedding),
    (0.6, Gen.loss), (1.2, Gen.loop), (0.8, Gen.call),
]


def generate(seed: int, max_ops: int = 8) -> Program:
    """One random valid model; the same seed always gives the same program."""
    rng = random.Random(seed)
    gen = Gen(rng, batch=rng.choice((1, 2, 3)), train=rng.random() < 0.4)
    sym = rng.random() < 0.5
    first = (gen.batch, *gen.shape(rng.randint(0, 3))) if sym else gen.shape(rng.randint(0, 4))
    gen.input(first, sym)
    if rng.random() < 0.5:  # an image, for conv2d and pooling
        gen.input((gen.batch if sym else 2, rng.choice((1, 2, 3)), *gen.shape(2)), sym)
    weights, ops = [w for w, _ in OPS], [op for _, op in OPS]
    for _ in range(rng.randint(1, max_ops)):
        while not rng.choices(ops, weights)[0](gen):
            pass
    uses_b = any(v.sym for v, _ in gen.inputs)
    return Program(gen.source(), {"B": gen.batch} if uses_b else {}, gen.train)


def _broadcast(a: Var, b: Var) -> tuple[tuple[int, ...], bool]:
    rank = max(a.rank, b.rank)
    pa, pb = (1,) * (rank - a.rank) + a.shape, (1,) * (rank - b.rank) + b.shape
    shape = tuple(max(x, y) for x, y in zip(pa, pb))
    sym = (a.sym and a.rank == rank) or (b.sym and b.rank == rank)
    return shape, sym


def _broadcast_vars(a: Var, b: Var, c: Var) -> tuple[Var, Var]:
    shape, sym = _broadcast(a, b)
    return Var("", shape, sym), c


def _window(size: int, k: int, s: int, p: int, d: int) -> int:
    return (size + 2 * p - d * (k - 1) - 1) // s + 1


def _factorize(rng: random.Random, n: int) -> list[int]:
    """A random list of dims (1 to 3 of them, 1s allowed) whose product is n."""
    out = []
    for _ in range(rng.randint(0, 2)):
        divs = [d for d in range(1, n + 1) if n % d == 0]
        d = rng.choice(divs)
        out.append(d)
        n //= d
    return [*out, n] if out or n != 1 or rng.random() < 0.5 else []


def _subscript(rank: int, axis: int, text: str, insert: bool = False) -> str:
    """`:, :, text` placing `text` at `axis` (before it when inserting)."""
    parts = [":"] * rank
    if insert:
        parts.insert(axis, text)
    else:
        parts[axis] = text
    return ", ".join(parts)
