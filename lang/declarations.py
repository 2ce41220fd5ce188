"""Duplicate declarations: each name is declared once per namespace.

Without this check the last declaration would silently win (two `param w`), or
two would coexist under different state-dict keys (`layer w` beside `param w`
gives both `w` and `w.w`). The namespaces are: layer types; top-level consts
and functions; in each layer, its hyperparameters and members together; in
each function, its arguments. The error points at the second declaration and
its note at the first.
"""

from __future__ import annotations

from collections.abc import Iterable

from ember.ir.loc import DSLError

from . import ast

Decl = ast.ConstDef | ast.FnDef | ast.LayerDef | ast.ParamDef | ast.SubLayerDef | ast.Arg


def check_declarations(program: ast.Program) -> None:
    """Raise a located DSLError at the first name declared twice in one namespace."""
    layers = [i for i in program.items if isinstance(i, ast.LayerDef)]
    _unique(layers)
    _unique(i for i in program.items if not isinstance(i, ast.LayerDef))
    for layer in layers:
        _unique([*layer.hparams, *layer.members], arg="a hyperparameter")
    functions = [i for i in program.items if isinstance(i, ast.FnDef)]
    functions += [m for layer in layers for m in layer.members if isinstance(m, ast.FnDef)]
    for fn in functions:
        _unique(fn.args)


def _unique(decls: Iterable[Decl], arg: str = "an argument") -> None:
    first: dict[str, Decl] = {}
    for d in decls:
        if d.name in first:
            prior = first[d.name]
            kind = arg if isinstance(prior, ast.Arg) else _kind(prior)
            raise DSLError(f"'{d.name}' is already declared as {kind}", d.loc,
                           f"first declared at {prior.loc}")
        first[d.name] = d


def _kind(d: Decl) -> str:
    if isinstance(d, ast.ParamDef):
        return "a parameter" if d.trainable else "a buffer"
    if isinstance(d, ast.LayerDef):
        return "the model" if d.is_model else "a layer type"
    return {ast.ConstDef: "a constant", ast.FnDef: "a function",
            ast.SubLayerDef: "a layer"}[type(d)]
