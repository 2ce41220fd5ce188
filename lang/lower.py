"""Lowering: AST -> IR Graph for one entry function of a model.

The walk is an abstract interpreter: every expression is evaluated to a
compile-time value (lang/values.py); tensor values become IR nodes whose types
the Builder infers as they are added, so shape errors surface at the DSL
location that caused them. Calls to user functions become CALL regions holding
the callee lowered for the argument types at that call site (the `inline` pass
splices them in); `for t in range(n)` becomes a LOOP region; `for blk in
blocks` over a layer array is unrolled here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ember.ir.dims import Dim
from ember.ir.dtypes import DType
from ember.ir.graph import Builder, Graph, Node, TensorType
from ember.ir.loc import UNKNOWN, DSLError, Loc
from ember.ir.ops import Op

from . import ast
from .emitter import MISSING, Emitter, Options
from .exprs import deeper, eval_expr, tensor_results
from .values import (
    ELLIPSIS_DIMS,
    MAX_DIM,
    Instance,
    Method,
    Tensor,
    as_dim,
    describe,
    dim_value,
)

SCALAR_TYPES = {"int": int, "float": float}
MAX_LAYER_DEPTH = 100


@dataclass
class Context:
    """Program-wide state of one lowering."""

    program: ast.Program
    options: Options
    globals: dict[str, Any] = field(default_factory=dict)
    layers: dict[str, ast.LayerDef] = field(default_factory=dict)
    streams: dict[str, int] = field(default_factory=dict)   # per function
    loc: Loc = UNKNOWN
    building: list[str] = field(default_factory=list)        # layers being instantiated
    calling: list[ast.FnDef] = field(default_factory=list)   # functions being lowered
    nesting: int = 0                                          # eval_expr recursion depth


def lower(program: ast.Program, entry: str = "forward", options: Options = Options()) -> Graph:
    """Lower `model.<entry>` of a parsed program to an IR Graph (with regions)."""
    ctx = Context(program, options)
    model = _collect_globals(ctx)
    root = instantiate(ctx, model, "", (), (), model.loc)
    if entry not in root.fns:
        raise DSLError(f"model '{model.name}' has no function '{entry}'", model.loc,
                       f"functions: {', '.join(sorted(root.fns)) or 'none'}")
    return lower_entry(ctx, Method(root.fns[entry], root))


def declared_params(program: ast.Program, options: Options = Options()
                    ) -> dict[str, tuple[TensorType, tuple[Any, ...]]]:
    """Every parameter and buffer the model declares, by dotted name: (type,
    initializer). This is the model's state dict, whichever entry or mode is
    compiled."""
    return {name: (n.tensor, n.attrs["init"]) for name, n in _declared(program, options).items()}


def declared_buffers(program: ast.Program, options: Options = Options()) -> set[str]:
    """The state-dict names declared with `buffer`: never trained."""
    return {name for name, n in _declared(program, options).items() if n.attrs.get("buffer")}


def _declared(program: ast.Program, options: Options) -> dict[str, Node]:
    ctx = Context(program, options)
    model = _collect_globals(ctx)
    out: dict[str, Node] = {}
    todo = [instantiate(ctx, model, "", (), (), model.loc)]
    while todo:
        inst = todo.pop()
        em = Emitter(Builder("<params>"), ctx, inst)
        for name in inst.params:
            out[f"{inst.path}.{name}" if inst.path else name] = em.builder.nodes[em.param(name).id]
        for v in inst.scope.values():
            todo += [v] if isinstance(v, Instance) else v if isinstance(v, list) else []
    return out


def _collect_globals(ctx: Context) -> ast.LayerDef:
    models = []
    for item in ctx.program.items:
        if isinstance(item, ast.LayerDef):
            ctx.layers[item.name] = item
            if item.is_model:
                models.append(item)
        elif isinstance(item, ast.FnDef):
            ctx.globals[item.name] = Method(item, None)
        else:
            ctx.globals[item.name] = _static_value(ctx, item.value, {})
    if len(models) != 1:
        where = models[1].loc if len(models) > 1 else Loc(ctx.program.file, 1, 1)
        raise DSLError(f"a program must define exactly one model, found {len(models)}", where)
    return models[0]


def _static_value(ctx: Context, expr: ast.Expr, scope: dict[str, Any]) -> Any:
    """Evaluate a constant expression (consts, hyperparameters, counts)."""
    em = Emitter(Builder("<const>"), ctx, None, dict(scope))
    v = eval_expr(em, expr)
    if isinstance(v, Tensor):
        raise DSLError("expected a constant (int or float), found a tensor expression", expr.loc)
    return v


def instantiate(ctx: Context, layer: ast.LayerDef, path: str, args: tuple[ast.Expr, ...],
                kwargs: tuple[tuple[str, ast.Expr], ...], loc: Loc,
                caller: dict[str, Any] | None = None) -> Instance:
    """Create a layer instance: bind hyperparameters, declare params and sub-layers."""
    if layer.name in ctx.building:
        chain = " -> ".join([*ctx.building[ctx.building.index(layer.name):], layer.name])
        raise DSLError(f"layer '{layer.name}' contains itself ({chain})", loc)
    if len(ctx.building) >= MAX_LAYER_DEPTH:  # instantiation recurses once per level
        raise DSLError(f"layers are nested too deeply (more than {MAX_LAYER_DEPTH} levels)", loc)
    ctx.building.append(layer.name)
    try:
        return _instantiate(ctx, layer, path, args, kwargs, loc, caller)
    finally:
        ctx.building.pop()


def _instantiate(ctx: Context, layer: ast.LayerDef, path: str, args: tuple[ast.Expr, ...],
                 kwargs: tuple[tuple[str, ast.Expr], ...], loc: Loc,
                 caller: dict[str, Any] | None) -> Instance:
    inst = Instance(layer, path)
    inst.scope.update(_bind_hparams(ctx, layer, args, kwargs, loc, caller or {}))
    for m in layer.members:
        if isinstance(m, ast.ConstDef):
            inst.scope[m.name] = _static_value(ctx, m.value, inst.scope)
        elif isinstance(m, ast.ParamDef):
            inst.params[m.name] = m
        elif isinstance(m, ast.FnDef):
            inst.fns[m.name] = m
            inst.scope[m.name] = Method(m, inst)
        else:
            inst.scope[m.name] = _sublayer(ctx, inst, m)
    return inst


def _bind_hparams(ctx: Context, layer: ast.LayerDef, args: tuple[ast.Expr, ...],
                  kwargs: tuple[tuple[str, ast.Expr], ...], loc: Loc,
                  caller: dict[str, Any]) -> dict[str, Any]:
    names = [h.name for h in layer.hparams]
    if len(args) > len(names):
        raise DSLError(f"layer '{layer.name}' takes {_count(len(names), 'hyperparameter')}, "
                       f"found {len(args)}", loc, f"hyperparameters: {', '.join(names) or 'none'}")
    given = dict(zip(names, args)) | dict(kwargs)
    bound = {}
    for h in layer.hparams:
        if h.name not in given:
            raise DSLError(f"layer '{layer.name}' needs hyperparameter '{h.name}'", loc)
        expr = given.pop(h.name)
        bound[h.name] = _static_value(ctx, expr, caller)
        if h.type.dtype == "int" and not isinstance(bound[h.name], int):
            raise DSLError(f"hyperparameter '{h.name}' of '{layer.name}' is an int, found "
                           f"{describe(bound[h.name])}", expr.loc)
    if given:
        raise DSLError(f"layer '{layer.name}' has no hyperparameter '{next(iter(given))}'", loc,
                       f"hyperparameters: {', '.join(names) or 'none'}")
    return bound


def _sublayer(ctx: Context, inst: Instance, m: ast.SubLayerDef) -> Instance | list[Instance]:
    if m.layer not in ctx.layers or ctx.layers[m.layer].is_model:
        raise DSLError(f"unknown layer type '{m.layer}'", m.loc,
                       _known(m.layer, [n for n, d in ctx.layers.items() if not d.is_model]))
    layer = ctx.layers[m.layer]
    path = f"{inst.path}.{m.name}" if inst.path else m.name
    if m.count is None:
        return instantiate(ctx, layer, path, m.args, m.kwargs, m.loc, inst.scope)
    count = _static_value(ctx, m.count, inst.scope)
    if not isinstance(count, int) or count < 1:
        raise DSLError(f"a layer array needs a positive int count, found {count}", m.count.loc)
    if count > MAX_LAYERS:
        raise DSLError(f"a layer array is unrolled, so at most {MAX_LAYERS} layers, "
                       f"found {count}", m.count.loc)
    return [instantiate(ctx, layer, f"{path}.{k}", m.args, m.kwargs, m.loc, inst.scope)
            for k in range(count)]


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def _known(name: str, names: list[str]) -> str:
    import difflib
    close = difflib.get_close_matches(name, names, n=1)
    if close:
        return f"did you mean '{close[0]}'?"
    return f"known layers: {', '.join(names)}" if names else "this program defines no layers"


# ---- functions ------------------------------------------------------------

def lower_entry(ctx: Context, method: Method) -> Graph:
    """An entry function: its dims are fresh symbols, its args graph inputs."""
    em = _function_emitter(ctx, method)
    ctx.calling.append(method.fn)
    inputs = []
    for a in method.fn.args:
        _no_entry_ellipsis(method.fn, a)
        t = resolve_type(em, a.type, {}, fresh=True)
        if isinstance(t, TensorType):
            node = em.add(Op.INPUT, (), {"name": a.name, "shape": t.shape, "dtype": t.dtype},
                          a.loc)
            inputs.append(node.id)
            em.vars[a.name] = node
        else:
            raise DSLError(f"entry function arguments must be tensors, '{a.name}' is "
                           f"{a.type.dtype}", a.loc)
    outs = run_body(em, method.fn)
    names = _output_names(method.fn, len(outs))
    names += tuple(f"new.{name}" for name in em.updates)
    outs += tuple(em.updates.values())
    return em.builder.build(tuple(inputs), tuple(o.id for o in outs), names)


def _no_entry_ellipsis(fn: ast.FnDef, a: ast.Arg) -> None:
    """An entry's inputs are the graph's: every dim needs a name for --dims and the
    input files, so `...` (which matches dims at a call) is refused there."""
    dots = _ellipsis(a.type)
    if dots is not None:
        raise DSLError(f"the inputs of entry function '{fn.name}' need every dim named; "
                       f"'...' in '{a.name}' only matches dims where a function is called",
                       dots.loc, f"write the dims out, e.g. {a.type.dtype}[B, T, n]")


def _output_names(fn: ast.FnDef, n: int) -> tuple[str, ...]:
    """The names the signature gives (`-> (logits: ..., loss: ...)`), else out0, out1, ...
    (or the function's name for a single result)."""
    if fn.ret_names:
        return fn.ret_names
    return tuple(f"out{k}" for k in range(n)) if n > 1 else (fn.name,)


def _function_emitter(ctx: Context, method: Method) -> Emitter:
    owner = f"{method.instance.layer.name}." if method.instance else ""
    return Emitter(Builder(owner + method.fn.name), ctx, method.instance)


def call_function(em: Emitter, method: Method, args: list[Any], loc: Loc,
                  prefix: str) -> tuple[Tensor, ...]:
    """Lower a user function for these argument types; emit a CALL region for it."""
    fn = method.fn
    if len(args) != len(fn.args):
        raise DSLError(f"function '{fn.name}' takes {_count(len(fn.args), 'argument')}, "
                       f"found {len(args)}", loc,
                       f"'{fn.name}' is declared at {fn.loc}" if fn.loc.known else "")
    stack = em.ctx.calling
    if any(f is fn for f in stack):
        start = next(k for k, f in enumerate(stack) if f is fn)
        chain = " -> ".join(f.name for f in [*stack[start:], fn])
        raise DSLError(f"function '{fn.name}' calls itself ({chain}); recursion is not "
                       f"supported", loc)
    callee = _function_emitter(em.ctx, method)
    tensor_args: list[tuple[Tensor, Tensor]] = []
    binds: dict[str, Dim] = {}
    for a, v in zip(fn.args, args):
        _bind_arg(em, callee, a, v, binds, tensor_args, loc)
    em.ctx.calling.append(fn)
    try:
        outs = run_body(callee, fn)
    finally:
        em.ctx.calling.pop()
    results = outs + tuple(callee.updates.values())  # state updates leave as extra results
    body = callee.builder.build(tuple(i.id for _, i in tensor_args), tuple(o.id for o in results))
    attrs = {"fn": callee.builder.name, "prefix": prefix, "body": body}
    call = em.add(Op.CALL, tuple(o for o, _ in tensor_args), attrs, loc)
    gets = tuple(em.add(Op.GET, (call,), {"index": k}, loc) for k in range(len(results)))
    for name, new in zip(callee.updates, gets[len(outs):]):
        em.update_state(f"{prefix}.{name}" if prefix else name, new, loc)
    return gets[:len(outs)]


def _bind_arg(em: Emitter, callee: Emitter, a: ast.Arg, v: Any, binds: dict[str, Dim],
              tensor_args: list[tuple[Tensor, Tensor]], call_loc: Loc) -> None:
    """Bind one argument; a mismatch is reported at the call, noting the declaration."""
    what = f"argument '{a.name}' of '{callee.builder.name}'"
    declared_at = f"'{a.name}' is declared at {a.loc}" if a.loc.known else ""
    if a.type.dtype in SCALAR_TYPES:
        if isinstance(v, Tensor) or not isinstance(v, (int, float)):
            raise DSLError(f"{what} expects {a.type.dtype}, found {describe(v)}",
                           call_loc, declared_at)
        callee.vars[a.name] = SCALAR_TYPES[a.type.dtype](v)
        return
    outer = coerce_tensor(em, v, call_loc)
    actual = em.type(outer)
    wanted = _rank_mismatch(a.type, actual)
    if wanted:
        raise DSLError(f"{what} expects {wanted}, found {actual}", call_loc, declared_at)
    declared = resolve_type(callee, a.type, binds, fresh=False, actual=actual)
    if declared != actual:
        raise DSLError(f"{what} expects {declared}, found {actual}", call_loc,
                       declared_at)
    inner = callee.add(Op.INPUT, (), {"name": a.name, "shape": actual.shape,
                                      "dtype": actual.dtype}, a.loc)
    callee.vars[a.name] = inner
    tensor_args.append((outer, inner))


def coerce_tensor(em: Emitter, v: Any, loc: Loc) -> Tensor:
    if isinstance(v, Tensor):
        return v
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return em.const(v, em.float_dtype if isinstance(v, float) else DType.I32, loc)
    raise DSLError(f"expected a tensor, found {describe(v)}", loc)


# Layer arrays are unrolled, one instance per element.
MAX_LAYERS = 10_000


def resolve_type(em: Emitter, ann: ast.TypeAnn, binds: dict[str, Dim], fresh: bool,
                 actual: TensorType | None = None) -> TensorType | type:
    """A type annotation as a TensorType; unknown dim names become symbols (entry)
    or are bound to the actual argument's dims (calls). A `...` stands for the dims
    the first `...` of the function's arguments matched (the dims beyond the named
    ones, wherever it sits); dims after it line up with the actual's last dims."""
    if ann.dims is None:
        return SCALAR_TYPES[ann.dtype]
    dtype = DType(ann.dtype)
    if dtype is DType.F32 and em.ctx.options.float64:
        dtype = DType.F64
    wanted = _rank_mismatch(ann, actual)
    if wanted:
        raise DSLError(f"expected {wanted}, found {actual}", ann.loc)
    shape: list[Dim] = []
    after = False  # past the `...`: positions count from the actual's end
    for k, d in enumerate(ann.dims):
        if isinstance(d, ast.EllipsisItem):
            shape += _ellipsis_dims(em, k, len(ann.dims) - 1, actual)
            after = True
        else:
            shape.append(_resolve_dim(em, d, binds, fresh, actual,
                                      k - len(ann.dims) if after else k))
    return TensorType(tuple(shape), dtype)


def _resolve_dim(em: Emitter, d: ast.Expr, binds: dict[str, Dim], fresh: bool,
                 actual: TensorType | None, at: int) -> Dim:
    """One named or computed dim; `at` is its position in the actual's shape."""
    if isinstance(d, ast.Name) and em.find(d.id) is MISSING:
        if d.id not in binds:
            binds[d.id] = d.id if fresh or actual is None else actual.shape[at]
            em.vars[d.id] = dim_value(binds[d.id])
        return binds[d.id]
    value = as_dim(eval_expr(em, d))
    if value is None:
        raise DSLError("expected a dimension (int or symbol) in the type", d.loc)
    if isinstance(value, int) and not 0 <= value <= MAX_DIM:
        raise DSLError(f"a dimension must be between 0 and {MAX_DIM}, found {value}", d.loc)
    return value


def _ellipsis_dims(em: Emitter, at: int, named: int, actual: TensorType | None
                   ) -> tuple[Dim, ...]:
    """The dims `...` stands for: those it matched already in this function, else
    (binding it) the actual's dims from position `at` that the named ones leave."""
    bound = em.find(ELLIPSIS_DIMS)
    if bound is not MISSING:
        return tuple(bound)
    assert actual is not None, "entries and results refuse an unbound '...' before this"
    em.vars[ELLIPSIS_DIMS] = actual.shape[at: at + actual.rank - named]
    return tuple(em.vars[ELLIPSIS_DIMS])


def _ellipsis(ann: ast.TypeAnn) -> ast.EllipsisItem | None:
    return next((d for d in ann.dims or () if isinstance(d, ast.EllipsisItem)), None)


def _rank_mismatch(ann: ast.TypeAnn, actual: TensorType | None) -> str:
    """What the annotation expects (e.g. 'a tensor of rank at least 1 (f32[..., ?])')
    if the actual's rank cannot fit it, else ''."""
    dims = ann.dims or ()
    dots = _ellipsis(ann) is not None
    named = len(dims) - dots
    if actual is None or (actual.rank >= named if dots else actual.rank == named):
        return ""
    pattern = ", ".join("..." if isinstance(d, ast.EllipsisItem) else "?" for d in dims)
    return (f"a tensor of rank {'at least ' if dots else ''}{named} "
            f"({ann.dtype}[{pattern}])")


def run_body(em: Emitter, fn: ast.FnDef) -> tuple[Tensor, ...]:
    """Lower a function's statements; return its result tensors, checked against `->`."""
    result = None
    for k, stmt in enumerate(fn.body):
        if isinstance(stmt, ast.Return):
            if k != len(fn.body) - 1:
                raise DSLError("'return' must be the last statement of a function", stmt.loc)
            result = tensor_results(em, stmt)
        else:
            run_stmt(em, stmt)
    if result is None:
        raise DSLError(f"function '{fn.name}' does not end with 'return'", fn.loc)
    _check_return(em, fn, result)
    return result


def _check_return(em: Emitter, fn: ast.FnDef, result: tuple[Tensor, ...]) -> None:
    if fn.ret is None:
        return
    if len(fn.ret) != len(result):
        raise DSLError(f"function '{fn.name}' declares {len(fn.ret)} results, "
                       f"returns {len(result)}", fn.body[-1].loc)
    for ann, t in zip(fn.ret, result):
        dots = _ellipsis(ann)
        if dots is not None and em.find(ELLIPSIS_DIMS) is MISSING:
            raise DSLError(f"'...' in the result type of '{fn.name}' stands for the dims an "
                           f"argument's '...' matched, and no argument has one", dots.loc,
                           "write '...' in an argument's type too, or name the dims")
        actual = em.type(t)
        declared = resolve_type(em, ann, {}, fresh=False, actual=actual)
        if declared != actual:
            raise DSLError(f"function '{fn.name}' declares result {declared}, "
                           f"returns {actual}", fn.body[-1].loc)


def run_stmt(em: Emitter, stmt: ast.Stmt) -> None:
    from .statements import run_for, run_let, run_let_for
    em.ctx.loc = stmt.loc
    if isinstance(stmt, ast.Let):
        run_let(em, stmt)
    elif isinstance(stmt, ast.For):
        with deeper(em, stmt.loc):
            run_for(em, stmt)
    elif isinstance(stmt, ast.LetFor):
        with deeper(em, stmt.loc):
            run_let_for(em, stmt)
    elif isinstance(stmt, ast.Yield):
        raise DSLError("'yield' is only allowed as the last statement of a loop whose "
                       "per-step outputs are bound by 'let'", stmt.loc,
                       "for example: let hs = for t in range(T) { ...; yield h }")
    else:
        raise DSLError("'return' is only allowed as the last statement of a function", stmt.loc)
