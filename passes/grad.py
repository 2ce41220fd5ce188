"""grad: reverse-mode autodiff as a pure Graph -> Graph pass.

`grad(g, inputs)` returns a graph that computes g's outputs and then the
gradient of its first output (a scalar) with respect to every parameter,
named `grad.<param>`, and to each named input, `grad.<input>`. It is
Autodidax's transpose on a whole graph: the forward nodes are copied, then
visited in reverse; each node's cotangent (the sum of what its users
contributed) goes to its rule in passes/vjp.py, which appends backward nodes
and returns one cotangent per operand.

Only *active* values get cotangents: floats that depend on a parameter or a
requested input. Backward nodes carry the source location of the forward node
they differentiate, so kernel headers name the DSL line. Scans (LOOP) are
differentiated by passes/scan_grad.py, which also decides what the forward
pass saves for the backward one.
"""

from __future__ import annotations

from collections.abc import Sequence

from ember.ir.graph import Builder, Graph, Node
from ember.ir.loc import DSLError, Loc
from ember.ir.ops import Op

from .rewrite import copy_node
from .vjp import NON_DIFFERENTIABLE, Ct, Emit, vjp_rules

Cts = dict[int, list[int]]


def grad(g: Graph, inputs: Sequence[str] = (), where: Loc | None = None) -> Graph:
    """g's outputs, then d(first output)/d(each parameter, each named input).
    `where` locates the error for an entry without a scalar first output
    (the entry's definition; by default, the expression returned)."""
    out = g.outputs[0] if g.outputs else None
    wrt = _wrt_inputs(g, inputs)
    if out is None or g.nodes[out].tensor.shape != () or not g.nodes[out].tensor.dtype.is_float:
        where = where or (g.nodes[out].loc if out is not None else None)
        found = g.nodes[out].tensor if out is not None else "no output"
        raise DSLError(f"gradients need an entry whose first output is a float scalar; "
                       f"'{g.name}' returns {found}", where)
    active = activity(g, set(wrt.values()))
    b = Builder(g.name)
    vals = copy_forward(b, g, active, {})
    seed = b.add(Op.FULL, (), {"value": 1.0, "shape": (), "dtype": g.nodes[out].tensor.dtype},
                 g.nodes[out].loc)
    cts = backprop(b, g, vals, {out: [seed]}, active)
    names, outs = list(g.output_names), [vals[o] for o in g.outputs]
    for name, i in [*_params(g).items(), *wrt.items()]:
        names.append(f"grad.{name}")
        outs.append(total(Emit(b, g.nodes[i].loc), cts.get(i, []), g.nodes[i]))
    return b.build(tuple(vals[i] for i in g.inputs), tuple(outs), tuple(names))


def _params(g: Graph) -> dict[str, int]:
    """Trainable float parameters by name (after inlining and CSE: one PARAM
    node each); buffers are state, not trained, and frozen ones are not."""
    found: dict[str, int] = {}
    for i, n in enumerate(g.nodes):
        if _trainable(n):
            found.setdefault(n.attrs["name"], i)
    return found


def _trainable(n: Node) -> bool:
    """Frozen parameters (passes/optim.py freeze) are constants here, as buffers."""
    return (n.op is Op.PARAM and n.tensor.dtype.is_float and not n.attrs.get("buffer")
            and not n.attrs.get("frozen"))


def _wrt_inputs(g: Graph, names: Sequence[str]) -> dict[str, int]:
    by_name = {g.nodes[i].attrs["name"]: i for i in g.inputs}
    out = {}
    for name in names:
        i = by_name.get(name)
        if i is None or not g.nodes[i].tensor.dtype.is_float:
            floats = [k for k, j in by_name.items() if g.nodes[j].tensor.dtype.is_float]
            raise DSLError(f"no float input '{name}' to differentiate with respect to; "
                           f"'{g.name}' has float inputs: {', '.join(floats) or 'none'}")
        out[name] = i
    return out


def activity(g: Graph, seeds: set[int]) -> set[int]:
    """Nodes that depend on a float parameter or a seed, and whose value (or,
    for a scan, some result) is a float."""
    from .scan_grad import scan_is_active
    active: set[int] = set()
    for i, n in enumerate(g.nodes):
        if n.op is Op.LOOP:
            if scan_is_active(n, [s in active for s in n.srcs]):
                active.add(i)
            continue
        if not (n.type if isinstance(n.type, tuple) else (n.type,))[0].dtype.is_float:
            continue
        origin = i in seeds or _trainable(n)
        if origin or (n.op not in NON_DIFFERENTIABLE and any(s in active for s in n.srcs)):
            active.add(i)
    return active


def copy_forward(b: Builder, g: Graph, active: set[int], given: dict[int, int]) -> list[int]:
    """Copy g into b (nodes in `given` already have values there); active
    scans are copied with the residuals their backward pass reads."""
    from .scan_grad import save_residuals
    vals: list[int] = []
    for i, n in enumerate(g.nodes):
        if i in given:
            vals.append(given[i])
            continue
        srcs = tuple(vals[s] for s in n.srcs)
        if n.op is Op.LOOP and i in active:
            vals.append(save_residuals(b, n, srcs, [s in active for s in n.srcs]))
        else:
            vals.append(copy_node(b, n, srcs))
    return vals


def backprop(b: Builder, g: Graph, vals: list[int], cts: Cts, active: set[int]) -> Cts:
    """Propagate cotangents from `cts` back through g (whose values in b are
    `vals`); return every node's list of cotangent contributions."""
    from .scan_grad import scan_vjp
    tuple_cts: dict[int, dict[int, int]] = {}
    for i in reversed(range(len(g.nodes))):
        n = g.nodes[i]
        if i not in active or n.op in NON_DIFFERENTIABLE:
            continue
        if n.op is Op.GET:
            if i in cts:
                ct = total(Emit(b, n.loc), cts[i], n)
                tuple_cts.setdefault(n.srcs[0], {})[n.attrs["index"]] = ct
            continue
        if n.op is Op.LOOP:
            src_cts = scan_vjp(b, n, vals[i], [vals[s] for s in n.srcs],
                               tuple_cts.get(i, {}), [s in active for s in n.srcs])
        elif isinstance(n.type, tuple) and i in tuple_cts:  # attention: by result index
            src_cts = vjp_rules[n.op](Emit(b, n.loc), n, [vals[s] for s in n.srcs], vals[i],
                                      tuple_cts[i], [s in active for s in n.srcs])
        elif i in cts:
            e = Emit(b, n.loc)
            src_cts = vjp_rules[n.op](e, n, [vals[s] for s in n.srcs], vals[i],
                                      total(e, cts[i], n))
        else:
            continue
        _add_contributions(cts, n, src_cts, active)
    return cts


def _add_contributions(cts: Cts, n: Node, src_cts: Sequence[Ct], active: set[int]) -> None:
    for s, c in zip(n.srcs, src_cts):
        if c is not None and s in active:
            cts.setdefault(s, []).append(c)


def total(e: Emit, parts: list[int], n: Node) -> int:
    """The sum of a node's cotangent contributions (zeros if it has none)."""
    if not parts:
        return e.zeros(n.tensor)
    out = parts[0]
    for p in parts[1:]:
        out = e(Op.ADD, out, p)
    return out
