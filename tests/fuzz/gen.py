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

from .genstate import SIZES, Gen, Program, Var, broadcast_shape

UNARY = (
    "exp(tanh({a}))",
    "log(1.0 + abs({a}))",
    "sqrt(abs({a}) + 0.5)",
    "rsqrt(abs({a}) + 0.5)",
    "abs({a})",
    "relu({a})",
    "sigmoid({a})",
    "tanh({a})",
    "erf({a})",
    "gelu({a})",
    "-{a}",
    "neg({a})",
    "{a} * 0.5",
    "tanh({a}) ** 2",
    "(abs({a}) + 0.5) ** 1.5",
    "{a} - 1",
    "2.0 * {a}",
)
BINARY = (
    "{a} + {b}",
    "{a} - {b}",
    "{a} * {b}",
    "{a} / (1.0 + abs({b}))",
    "maximum({a}, {b})",
    "minimum({a}, {b})",
    "add({a}, {b})",
    "mul({a}, {b})",
)
COMPARE = ("<", "<=", ">", ">=", "==", "!=")


def unary(g: Gen) -> bool:
    a = g.pick()
    if a is None:
        return False
    g.let(g.rng.choice(UNARY).format(a=a.name), a.shape, a.sym)
    return True


def binary(g: Gen) -> bool:
    a = g.pick()
    if a is None:
        return False
    b = g.partner(a)
    x, y = (a, b) if g.rng.random() < 0.7 else (b, a)
    shape, sym = broadcast_shape(x, y)
    g.let(g.rng.choice(BINARY).format(a=x.name, b=y.name), shape, sym)
    return True


def where(g: Gen) -> bool:
    a = g.pick()
    if a is None:
        return False
    c = g.input(g.partner_shape(a), a.sym)
    b = g.partner(a)
    shape, sym = broadcast_shape(*_broadcast_vars(a, b, c))
    cond = f"{c.name} {g.rng.choice(COMPARE)} {g.rng.choice(('0.0', '0.3', '-0.5'))}"
    if g.rng.random() < 0.3:
        cond = (
            f"logical_not({cond})"
            if g.rng.random() < 0.5
            else f"logical_and({cond}, {c.name} < 1.0)"
        )
    g.let(f"where({cond}, {a.name}, {b.name})", shape, sym)
    return True


def reduce(g: Gen) -> bool:
    a = g.pick(lambda v: v.rank >= 1)
    if a is None:
        return False
    fn = g.rng.choice(("sum", "mean", "max", "min"))
    keep = g.rng.random() < 0.4
    if g.rng.random() < 0.15:
        g.let(f"{fn}({a.name})", (), False)
        return True
    axis = g.rng.randrange(a.rank)
    spelled = axis - a.rank if g.rng.random() < 0.3 else axis
    shape = a.shape[:axis] + ((1,) if keep else ()) + a.shape[axis + 1 :]
    sym = a.sym and axis != 0
    g.let(f"{fn}({a.name}, axis={spelled}, keepdims={str(keep).lower()})", shape, sym)
    return True


def argmax(g: Gen) -> bool:
    inputs = [v for v, dt in g.inputs if dt == "f32" and v.rank >= 1]
    if not inputs:
        return False
    a = g.rng.choice(inputs)
    axis = g.rng.randrange(a.rank)
    g.let(
        f"to_float(argmax({a.name}, axis={axis}))",
        a.shape[:axis] + a.shape[axis + 1 :],
        a.sym and axis != 0,
    )
    return True


def matmul(g: Gen) -> bool:
    a = g.pick(lambda v: v.rank >= 2 and v.rank - 1 in v.static_axes())
    if a is None:
        return False
    k, n = a.shape[-1], g.rng.choice(SIZES)
    w = (
        g.param((k, n))
        if g.rng.random() < 0.7
        else g.leaf((*a.shape[:-2], k, n), a.sym and a.rank > 2)
    )
    g.let(f"{a.name} @ {w.name}", (*a.shape[:-1], n), a.sym)
    return True


def conv(g: Gen) -> bool:
    a = g.pick(lambda v: v.rank == 4)
    if a is None:
        return False
    _, c, h, wd = a.shape
    groups = g.rng.choice([d for d in range(1, c + 1) if c % d == 0])
    o = groups * g.rng.randint(1, 2)
    stride, pad, dil = (g.rng.randint(1, 2) for _ in range(3))
    most = [max(1, min(3, (s + 2 * pad - 1) // dil + 1)) for s in (h, wd)]
    kh, kw = (g.rng.randint(1, k) for k in most)
    oh, ow = (_window(s, k, stride, pad, dil) for s, k in ((h, kh), (wd, kw)))
    if min(oh, ow) < 1:
        return False
    w = g.param((o, c // groups, kh, kw))
    g.let(
        f"conv2d({a.name}, {w.name}, stride={stride}, padding=({pad}, {pad}), "
        f"dilation={dil}, groups={groups})",
        (a.shape[0], o, oh, ow),
        a.sym,
    )
    return True


def pool(g: Gen) -> bool:
    a = g.pick(lambda v: v.rank == 4)
    if a is None:
        return False
    kh, kw = g.rng.randint(1, 3), g.rng.randint(1, 3)
    ph, pw = g.rng.randint(0, kh // 2), g.rng.randint(0, kw // 2)
    sh, sw = g.rng.randint(1, kh), g.rng.randint(1, kw)
    oh, ow = _window(a.shape[2], kh, sh, ph, 1), _window(a.shape[3], kw, sw, pw, 1)
    if min(oh, ow) < 1:
        return False
    fn = g.rng.choice(("max_pool2d", "avg_pool2d"))
    g.let(
        f"{fn}({a.name}, ({kh}, {kw}), stride=({sh}, {sw}), padding=({ph}, {pw}))",
        (a.shape[0], a.shape[1], oh, ow),
        a.sym,
    )
    return True


def permute(g: Gen) -> bool:
    a = g.pick(lambda v: v.rank >= 2)
    if a is None:
        return False
    perm = list(range(a.rank))
    head = perm[1:] if a.sym else perm
    g.rng.shuffle(head)
    perm = [0, *head] if a.sym else head
    if g.rng.random() < 0.3:
        perm = list(range(a.rank))
        perm[-2], perm[-1] = perm[-1], perm[-2]
        if a.rank == 2 and a.sym:
            return False
        expr = f"transpose({a.name})"
    else:
        expr = f"permute({a.name}, {', '.join(map(str, perm))})"
    g.let(expr, tuple(a.shape[p] for p in perm), a.sym)
    return True


def reshape(g: Gen) -> bool:
    a = g.pick()
    if a is None:
        return False
    head = ["B"] if a.sym else []
    n = math.prod(a.shape[1:] if a.sym else a.shape)
    target = _factorize(g.rng, n)
    spelled = [str(d) for d in target]
    if target and g.rng.random() < 0.3:
        spelled[g.rng.randrange(len(spelled))] = "-1"
    if not head + spelled:
        return False
    g.let(
        f"reshape({a.name}, {', '.join(head + spelled)})",
        (*(a.shape[:1] if a.sym else ()), *target),
        a.sym,
    )
    return True


def slicing(g: Gen) -> bool:
    a = g.pick(lambda v: bool(v.static_axes()))
    if a is None:
        return False
    axis = g.rng.choice(a.static_axes())
    size = a.shape[axis]
    if g.rng.random() < 0.3:
        k = g.rng.randrange(-size, size)
        g.let(
            f"{a.name}[{_subscript(a.rank, axis, str(k))}]",
            a.shape[:axis] + a.shape[axis + 1 :],
            a.sym and axis != 0,
        )
        return True
    start, stop = g.rng.randint(-size, size), g.rng.randint(-size, size + 2)
    step = g.rng.randint(1, 3)
    length = len(range(*slice(start, stop, step).indices(size)))
    if length < 1:
        return False
    text = f"{start}:{stop}" + (f":{step}" if step > 1 else "")
    g.let(
        f"{a.name}[{_subscript(a.rank, axis, text)}]",
        a.shape[:axis] + (length,) + a.shape[axis + 1 :],
        a.sym,
    )
    return True


def unsqueeze(g: Gen) -> bool:
    a = g.pick(lambda v: v.rank < 5)
    if a is None:
        return False
    axis = g.rng.randint(1 if a.sym else 0, a.rank)
    shape = a.shape[:axis] + (1,) + a.shape[axis:]
    if g.rng.random() < 0.5:
        g.let(f"unsqueeze({a.name}, {axis})", shape, a.sym)
    else:
        g.let(f"{a.name}[{_subscript(a.rank, axis, 'None', insert=True)}]", shape, a.sym)
    return True


def squeeze(g: Gen) -> bool:
    a = g.pick(lambda v: any(v.shape[k] == 1 for k in v.static_axes()))
    if a is None:
        return False
    axis = g.rng.choice([k for k in a.static_axes() if a.shape[k] == 1])
    g.let(f"squeeze({a.name}, {axis})", a.shape[:axis] + a.shape[axis + 1 :], a.sym and axis != 0)
    return True


def concat(g: Gen) -> bool:
    a = g.pick(lambda v: bool(v.static_axes()))
    if a is None:
        return False
    axis = g.rng.choice(a.static_axes())
    other = a.shape[:axis] + (g.rng.choice(SIZES),) + a.shape[axis + 1 :]
    b = g.leaf(other, a.sym)
    shape = a.shape[:axis] + (a.shape[axis] + other[axis],) + a.shape[axis + 1 :]
    g.let(f"concat({a.name}, {b.name}, axis={axis})", shape, a.sym)
    return True


def split(g: Gen) -> bool:
    a = g.pick(lambda v: any(v.shape[k] % 2 == 0 for k in v.static_axes()))
    if a is None:
        return False
    axis = g.rng.choice([k for k in a.static_axes() if a.shape[k] % 2 == 0])
    half = a.shape[:axis] + (a.shape[axis] // 2,) + a.shape[axis + 1 :]
    first, second = Var(g.fresh("v"), half, a.sym), Var(g.fresh("v") + "b", half, a.sym)
    g.lines.append(f"let {first.name}, {second.name} = split({a.name}, 2, axis={axis})")
    g.vals += [first, second]
    return True


def broadcast(g: Gen) -> bool:
    a = g.pick(lambda v: any(v.shape[k] == 1 for k in v.static_axes()))
    if a is None:
        return False
    shape = tuple(
        g.rng.choice(SIZES) if d == 1 and (k or not a.sym) else d for k, d in enumerate(a.shape)
    )
    dims = ["B" if k == 0 and a.sym else str(d) for k, d in enumerate(shape)]
    g.let(f"broadcast({a.name}, {', '.join(dims)})", shape, a.sym)
    return True


def normalize(g: Gen) -> bool:
    a = g.pick(lambda v: v.rank >= 1 and v.rank - 1 in v.static_axes())
    if a is None:
        return False
    axis = g.rng.choice([-1, a.rank - 1])
    kind = g.rng.choice(("softmax", "log_softmax", "layer_norm", "batch_norm"))
    if kind == "layer_norm":
        w, b = g.param(a.shape[-1:]), g.param(a.shape[-1:])
        expr = f"layer_norm({a.name}, {w.name}, {b.name})"
    elif kind == "batch_norm" and a.rank >= 2 and 1 in a.static_axes():
        c = a.shape[1:2]
        names = [g.param(c).name, g.param(c).name, g.param(c).name, g.param(c, "ones").name]
        expr = f"batch_norm({a.name}, {', '.join(names)})"
    else:
        expr = f"{g.rng.choice(('softmax', 'log_softmax'))}({a.name}, axis={axis})"
    g.let(expr, a.shape, a.sym)
    return True


def dropout(g: Gen) -> bool:
    a = g.pick()
    if a is None:
        return False
    g.let(f"dropout({a.name}, p={g.rng.choice((0.1, 0.5, 0.0))})", a.shape, a.sym)
    return True


def embedding(g: Gen) -> bool:
    sym = g.rng.random() < 0.5
    ids_shape = ((g.batch,) if sym else ()) + g.shape(g.rng.randint(0, 2))
    rows, d = g.rng.choice(SIZES), g.rng.choice(SIZES)
    ids = g.input(ids_shape, sym, "i32")
    if g.rng.random() < 0.5:
        table = g.param((rows, d))
        g.let(f"embedding({table.name}, {ids.name})", (*ids_shape, d), sym)
    else:
        g.let(f"one_hot({ids.name}, {rows})", (*ids_shape, rows), sym)
    return True


def loss(g: Gen) -> bool:
    a = g.pick(lambda v: v.rank >= 1 and v.rank - 1 in v.static_axes())
    if a is None:
        return False
    if g.rng.random() < 0.5:
        labels = g.input(a.shape[:-1], a.sym and a.rank > 1, "i32")
        g.let(f"cross_entropy({a.name}, {labels.name})", (), False)
    else:
        g.let(f"mse({a.name}, {g.partner(a).name})", (), False)
    return True


def loop(g: Gen) -> bool:
    a = g.pick(lambda v: v.rank == 2 and 1 in v.static_axes())
    if a is None:
        sym = g.rng.random() < 0.5
        a = g.input((g.batch if sym else g.rng.choice(SIZES), g.rng.choice(SIZES)), sym)
    n, steps = a.shape[1], g.rng.randint(1, 4)
    w = g.param((n, n), "normal(0.3)")
    seq = g.input((a.shape[0], steps, n), a.sym)
    h = g.let(f"tanh({a.name})", a.shape, a.sym)
    body = f"tanh({h.name} @ {w.name} + {seq.name}[:, t, :])"
    if g.rng.random() < 0.4:
        body = f"dropout({body}, p=0.2)"
    g.lines.append(f"for t in range({steps}) {{\n      {h.name} = {body}\n    }}")
    return True


def call(g: Gen) -> bool:
    a = g.pick()
    if a is None:
        return False
    fn = g.fresh("f")
    body = g.rng.choice(UNARY).format(a="a")
    g.helpers.append(f"def {fn}(a: {g.type_of(a)}) -> {g.type_of(a)} {{ return {body} }}")
    g.let(f"{fn}({a.name})", a.shape, a.sym)
    return True


OPS: list[tuple[float, Callable[[Gen], bool]]] = [
    (4, unary),
    (4, binary),
    (1.5, where),
    (2, reduce),
    (0.7, argmax),
    (2, matmul),
    (1.5, conv),
    (1, pool),
    (1, permute),
    (1.5, reshape),
    (1.5, slicing),
    (1, unsqueeze),
    (0.7, squeeze),
    (1, concat),
    (0.7, split),
    (0.7, broadcast),
    (1.2, normalize),
    (1.2, dropout),
    (0.8, embedding),
    (0.6, loss),
    (1.2, loop),
    (0.8, call),
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


def _broadcast_vars(a: Var, b: Var, c: Var) -> tuple[Var, Var]:
    shape, sym = broadcast_shape(a, b)
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
