"""Parameter declarations: static shapes and initializer specs.

An initializer is stored on the PARAM node as a tuple `(kind, *args)`; its
meaning (distributions, fan-in conventions) lives in runtime/init.py.
"""

from __future__ import annotations

from typing import Any

from ember.ir.dtypes import DType
from ember.ir.graph import Builder
from ember.ir.loc import DSLError
from ember.ir.ops import Op

from . import ast
from .values import MAX_DIM, Tensor, as_dim

# initializer name -> (min args, max args)
INITIALIZERS = {
    "zeros": (0, 0), "ones": (0, 0), "normal": (0, 1), "uniform": (0, 2),
    "glorot_uniform": (0, 0), "glorot_normal": (0, 0), "he_uniform": (0, 0),
    "he_normal": (0, 0),
}


def param_node(em: Any, pdef: ast.ParamDef) -> Tensor:
    from .emitter import Emitter
    from .exprs import eval_expr
    scope = Emitter(Builder("<param>"), em.ctx, em.instance)
    shape = []
    for d in pdef.type.dims or ():
        if isinstance(d, ast.EllipsisItem):
            raise DSLError(f"parameter '{pdef.name}' needs every dim given; '...' only "
                           f"matches dims in a function's argument types", d.loc)
        v = as_dim(eval_expr(scope, d))
        if not isinstance(v, int) or not 1 <= v <= MAX_DIM:
            raise DSLError(f"parameter shapes must be ints from 1 to {MAX_DIM}, found {v}",
                           d.loc)
        shape.append(v)
    if pdef.type.dims is None:
        raise DSLError(f"parameter '{pdef.name}' needs a tensor type", pdef.type.loc)
    dtype = DType(pdef.type.dtype)
    if dtype is DType.F32 and em.ctx.options.float64:
        dtype = DType.F64
    attrs = {"name": pdef.name, "shape": tuple(shape), "dtype": dtype,
             "init": _initializer(scope, pdef, dtype)}
    if not pdef.trainable:
        attrs["buffer"] = True
    return em.add(Op.PARAM, (), attrs, pdef.loc)


def _initializer(scope: Any, pdef: ast.ParamDef, dtype: DType) -> tuple[Any, ...]:
    from ember.runtime.init import check_args

    from .exprs import eval_expr
    init = pdef.init
    if init is None:
        return ("zeros",)
    name_node = init.fn if isinstance(init, ast.Call) else init
    if not isinstance(name_node, ast.Name) or name_node.id not in INITIALIZERS:
        found = name_node.id if isinstance(name_node, ast.Name) else "an expression"
        raise DSLError(f"unknown initializer '{found}'", init.loc,
                       f"initializers: {', '.join(INITIALIZERS)}")
    if isinstance(init, ast.Call) and init.kwargs:
        raise DSLError(f"initializer arguments are positional, e.g. {name_node.id}(0.02); "
                       f"found keyword '{init.kwargs[0][0]}'", init.loc)
    args = tuple(eval_expr(scope, a) for a in init.args) if isinstance(init, ast.Call) else ()
    lo, hi = INITIALIZERS[name_node.id]
    if not lo <= len(args) <= hi or any(not isinstance(a, (int, float)) for a in args):
        raise DSLError(f"initializer '{name_node.id}' takes {lo} to {hi} numbers, "
                       f"found {len(args)} arguments", init.loc)
    numbers = tuple(float(a) for a in args)
    problem = check_args(name_node.id, numbers, dtype.np)
    if problem:
        raise DSLError(f"initializer '{name_node.id}' of parameter '{pdef.name}': {problem}",
                       init.loc)
    return (name_node.id, *numbers)
