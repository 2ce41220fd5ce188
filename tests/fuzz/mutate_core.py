"""Mutation testing of the core: does the suite notice a flipped operator?

    cd tests && python -m fuzz.mutate_core --sample 30

For each target (the oracle, the shape rules, the fusion decision) every mutation
site is listed: a comparison flipped (< and <=, == and !=, in and not in, is and
is not), an arithmetic operator swapped (+ and -, * and /), `and` and `or`
swapped, a `not` dropped, a small int constant moved by one, True and False
swapped, a NumPy function swapped for its twin (maximum and minimum, less and
less_equal, ...), or an `if` condition replaced by False (a check removed).
A sample of the mutants runs the target's tests; a mutant is killed when they
fail. The working tree is never touched: the mutated module is written to a
temporary file and imported in place of the real one by a meta-path finder in
a child process, with a fresh kernel cache (so no kernel generated from the real
code is reused). Prints the kill share per target and the surviving mutants.
"""

from __future__ import annotations

import argparse
import ast
import os
import random
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FUSE_DECISION = frozenset({"can_join", "_in_reduce_space", "_reads", "kernel_deps", "_waits_for",
                           "depends_on"})
# file -> (module name, functions to mutate (None: all), tests that guard it)
TARGETS: dict[str, tuple[str, frozenset[str] | None, tuple[str, ...]]] = {
    "runtime/oracle.py": ("ember.runtime.oracle", None,
                          ("tests/test_ops_vs_torch.py", "tests/test_torch_ir.py")),
    "ir/shapes.py": ("ember.ir.shapes", None,
                     ("tests/test_ir.py", "tests/test_parser.py", "tests/test_ops_vs_torch.py",
                      "tests/fuzz/test_core_rules.py")),
    "passes/fuse.py": ("ember.passes.fuse", FUSE_DECISION,
                       ("tests/test_fuse.py", "tests/fuzz/test_core_rules.py")),
}
COMPARE_FLIPS = {ast.Lt: ast.LtE, ast.LtE: ast.Lt, ast.Gt: ast.GtE, ast.GtE: ast.Gt,
                 ast.Eq: ast.NotEq, ast.NotEq: ast.Eq, ast.In: ast.NotIn, ast.NotIn: ast.In,
                 ast.Is: ast.IsNot, ast.IsNot: ast.Is}
BINOP_FLIPS = {ast.Add: ast.Sub, ast.Sub: ast.Add, ast.Mult: ast.Div, ast.Div: ast.Mult,
               ast.FloorDiv: ast.Mult}
NP_TWINS = {"maximum": "minimum", "minimum": "maximum", "less": "less_equal",
            "less_equal": "less", "greater": "greater_equal", "greater_equal": "greater",
            "equal": "not_equal", "not_equal": "equal", "add": "subtract", "subtract": "add",
            "max": "min", "min": "max", "logical_and": "logical_or", "logical_or": "logical_and",
            "sum": "mean", "mean": "sum", "exp": "expm1", "log": "log1p", "argmax": "argmin"}
RUNNER = """
import importlib.util, sys
name, path, *tests = sys.argv[1:]
class Finder:
    @staticmethod
    def find_spec(fullname, _path=None, _target=None):
        return importlib.util.spec_from_file_location(name, path) if fullname == name else None
sys.meta_path.insert(0, Finder)
import pytest
sys.exit(pytest.main(["-q", "-x", "-p", "no:cacheprovider", *tests]))
"""


@dataclass(frozen=True)
class Mutant:
    file: str
    index: int     # the site's position in the walk order
    line: int
    change: str    # e.g. "Lt -> LtE"
    text: str      # the source line, as it was when the sites were listed


def _nodes(tree: ast.AST, only: frozenset[str] | None) -> Iterator[ast.AST]:
    """Nodes inside the chosen functions (all of them if `only` is None), in walk order."""
    for fn in ast.walk(tree):
        if isinstance(fn, ast.FunctionDef) and (only is None or fn.name in only):
            yield from ast.walk(fn)
    if only is None:  # module-level code too: the rule tables
        for stmt in getattr(tree, "body", []):
            if not isinstance(stmt, ast.FunctionDef | ast.ClassDef):
                yield from ast.walk(stmt)


def _changes(node: ast.AST) -> list[tuple[str, object]]:
    """The mutations possible at one node: (description, a callable that applies one)."""
    out: list[tuple[str, object]] = []
    if isinstance(node, ast.Compare):
        for k, op in enumerate(node.ops):
            if type(op) in COMPARE_FLIPS:
                new = COMPARE_FLIPS[type(op)]
                out.append((f"{type(op).__name__} -> {new.__name__}",
                            lambda n=node, k=k, new=new: n.ops.__setitem__(k, new())))
    elif isinstance(node, ast.BinOp) and type(node.op) in BINOP_FLIPS:
        new = BINOP_FLIPS[type(node.op)]
        out.append((f"{type(node.op).__name__} -> {new.__name__}",
                    lambda n=node, new=new: setattr(n, "op", new())))
    elif isinstance(node, ast.BoolOp):
        new = ast.Or if isinstance(node.op, ast.And) else ast.And
        out.append((f"{type(node.op).__name__} -> {new.__name__}",
                    lambda n=node, new=new: setattr(n, "op", new())))
    elif isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
        out.append(("drop not", lambda n=node: setattr(n, "op", ast.UAdd())))
    elif isinstance(node, ast.Constant) and type(node.value) in (int, bool):
        new_value = (not node.value) if isinstance(node.value, bool) else node.value + 1
        out.append((f"{node.value!r} -> {new_value!r}",
                    lambda n=node, v=new_value: setattr(n, "value", v)))
    elif (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
          and node.value.id == "np" and node.attr in NP_TWINS):
        twin = NP_TWINS[node.attr]
        out.append((f"np.{node.attr} -> np.{twin}", lambda n=node, t=twin: setattr(n, "attr", t)))
    elif isinstance(node, ast.If):
        out.append(("if ... -> if False",
                    lambda n=node: setattr(n, "test", ast.Constant(value=False))))
    return out


def sites(file: str) -> list[Mutant]:
    """Every mutation of one target file, in a stable order."""
    only = TARGETS[file][1]
    text = (ROOT / file).read_text()
    lines = text.splitlines()
    out = []
    for node in _nodes(ast.parse(text), only):
        for desc, _ in _changes(node):
            line = getattr(node, "lineno", 0)
            out.append(Mutant(file, len(out), line, desc, lines[line - 1].strip()))
    return out


def mutated_source(m: Mutant) -> str:
    tree = ast.parse((ROOT / m.file).read_text())
    changes = [apply for node in _nodes(tree, TARGETS[m.file][1]) for _, apply in _changes(node)]
    changes[m.index]()  # type: ignore[operator]
    return ast.unparse(ast.fix_missing_locations(tree))


def killed(m: Mutant, timeout: float) -> bool:
    """Whether the target's tests fail (or hang) with this mutant in place."""
    module, _, tests = TARGETS[m.file]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / Path(m.file).name
        path.write_text(mutated_source(m))
        env = {**os.environ, "EMBER_CACHE_DIR": str(Path(tmp) / "cache")}
        try:
            run = subprocess.run([sys.executable, "-c", RUNNER, module, str(path), *tests],
                                 cwd=ROOT, env=env, capture_output=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return True
    return run.returncode != 0


def _run_target(file: str, sample: int, seed: int, timeout: float) -> None:
    """Run a sample of one target's mutants; print survivors, then the kill share."""
    every = sites(file)
    chosen = every if not sample else sorted(
        random.Random(seed).sample(every, min(sample, len(every))), key=lambda m: m.index)
    survivors = []
    for m in chosen:
        if not killed(m, timeout):
            survivors.append(m)
            print(f"  survived: {m.file}:{m.line} {m.change}: {m.text}", flush=True)
    share = 1 - len(survivors) / len(chosen) if chosen else 1.0
    print(f"{file}: {len(every)} sites, {len(chosen)} run, {len(chosen) - len(survivors)} "
          f"killed ({share:.0%})", flush=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sample", type=int, default=30, help="mutants per target (0: all)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--timeout", type=float, default=600)
    p.add_argument("--only", choices=sorted(TARGETS), action="append")
    args = p.parse_args(argv)
    for file in args.only or TARGETS:
        _run_target(file, args.sample, args.seed, args.timeout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
