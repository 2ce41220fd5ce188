"""The differential harness: run one fuzz case and say what happened.

Every case ends in exactly one outcome:

* located error: a DSLError pointing into the source (the right answer to bad input);
* success: it compiled (and ran, and every backend agreed);
* unlocated error: a DSLError with no file:line:col (a whole-file error must at
  least point at the file);
* traceback: any other exception, or the worker process dying (a segfault);
* hang: no answer within the case's time limit;
* mismatch: two evaluators disagree beyond the tolerance of the dtype.

Cases run in a worker process (`Worker`) so that a hang or a crash is an outcome,
not the end of the campaign. A failure's `signature` (outcome, exception type and
innermost Ember frame, or the comparison that failed) groups failures into
distinct bugs; `minimize` shrinks a reproducer while its signature stays the same.
"""

from __future__ import annotations

import faulthandler
import math
import multiprocessing as mp
import os
import re
import resource
import tempfile
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ember import api
from ember.codegen.module import emit_triton
from ember.ir import dims
from ember.ir.graph import Graph, walk_nodes
from ember.ir.loc import DSLError
from ember.lang.emitter import Options
from ember.lang.parser import parse
from ember.runtime import oracle
from ember.runtime.inputs import draw_inputs

FILE = "fuzz.ember"
RUN_DIMS = {"B": 2, "T": 3}     # dims for running a mutant that compiled
MAX_ELEMENTS = 2_000_000        # skip running mutants bigger than this (allocation guard)
MEMORY_LIMIT = 6 * 2**30        # address space of a worker, a safety net for the machine
REPO = Path(__file__).resolve().parents[2]
# where a failure's frames count as ours: Ember's packages and the torch evaluator
EMBER_DIRS = tuple(str(REPO / d) for d in ("ember", "ir", "lang", "passes", "codegen", "runtime",
                                           "tests/torch_ir.py"))


class Outcome(Enum):
    LOCATED = "located error"
    SUCCESS = "success"
    UNLOCATED = "unlocated error"
    TRACEBACK = "traceback"
    HANG = "hang"
    MISMATCH = "mismatch"


FAILURES = frozenset({Outcome.UNLOCATED, Outcome.TRACEBACK, Outcome.HANG, Outcome.MISMATCH})


@dataclass(frozen=True)
class Result:
    outcome: Outcome
    signature: str = ""  # for failures: which bug this is
    detail: str = ""     # the message, traceback tail or comparison numbers

    @property
    def failed(self) -> bool:
        return self.outcome in FAILURES


def classify(e: BaseException) -> Result:
    """The outcome of a case that raised `e`."""
    if isinstance(e, DSLError):
        if e.loc.known or FILE in e.message:
            return Result(Outcome.LOCATED, detail=e.render())
        return Result(Outcome.UNLOCATED, f"unlocated: {e.message[:50]}", e.render())
    frames = [f for f in traceback.extract_tb(e.__traceback__) if f.filename.startswith(EMBER_DIRS)]
    where = f"{Path(frames[-1].filename).name}:{frames[-1].name}" if frames else "outside ember"
    tail = "".join(traceback.format_exception(type(e), e, e.__traceback__)[-3:])
    what = _gist(str(e).split("\n")[0])
    return Result(Outcome.TRACEBACK, f"{type(e).__name__} in {where}: {what}", tail[-2000:])


def _gist(message: str) -> str:
    """A message without the interpreter's nested wrappers, quotes and numbers."""
    message = re.sub(r"InterpreterError\(|\\|['\"]", "", message)
    return re.sub(r"\d+", "N", message).rstrip(")")[:60]


def guarded(check: Callable[..., Result], *args: Any) -> Result:
    """Run a check, turning any exception into its outcome."""
    try:
        with np.errstate(all="ignore"):
            return check(*args)
    except Exception as e:  # every exception is an outcome here
        return classify(e)


# ---- mutants: compile, generate code, run small ones on the oracle ----------------

def check_source(src: str, train: bool = False) -> Result:
    """What `ember compile` (IR, kernels) and a small `ember run` do with this text."""
    program = parse(src, FILE)
    options = Options(train, False)
    for entry in ("forward", "loss") if "loss" in src else ("forward",):
        g = api.compile_program(program, entry, options=options)
        emit_triton(g)
        if _elements(g, api.model_params(program, options)) <= MAX_ELEMENTS:
            _run_oracle(g, program, options)
    return Result(Outcome.SUCCESS)


def _elements(g: Graph, declared: dict[str, Any]) -> float:
    """Elements a run would allocate: every declared parameter and every IR value."""
    env = {s: RUN_DIMS.get(s, 2) for n in walk_nodes(g) if hasattr(n.type, "shape")
           for s in dims.symbols(n.type.shape)}
    shapes = [t.shape for t, _ in declared.values()]
    shapes += [n.type.shape for n in walk_nodes(g) if hasattr(n.type, "shape")]
    return sum(math.prod(float(dims.bind(d, env)) for d in s) for s in shapes)


def _run_oracle(g: Graph, program: Any, options: Options) -> None:
    params = api.init_model_params(program, options, seed=0)
    symbols = {s for i in g.inputs for s in dims.symbols(g.nodes[i].tensor.shape)}
    inputs, env, _ = draw_inputs(g, {}, {k: v for k, v in RUN_DIMS.items() if k in symbols}, 0)
    oracle.evaluate(g, inputs, {k: params[k] for k in g.params()}, 0, env)


# ---- the worker process -------------------------------------------------------------

def _serve(conn: Any, stacks: Any) -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))
    # A forked child must not enter the OpenMP pool of a parent that already ran
    # torch ops (pytest does): it would wait forever for threads it does not have.
    torch.set_num_threads(1)
    while True:
        check, args, limit = conn.recv()
        # where a hang is stuck: the stacks, dumped just before the parent gives up
        stacks.seek(0)
        stacks.truncate()
        faulthandler.dump_traceback_later(limit * 0.9, file=stacks)
        result = guarded(check, *args)
        faulthandler.cancel_dump_traceback_later()
        conn.send(result)


def _stuck_at(stacks: Any) -> str:
    """The pass a hang is stuck in: the two outermost Ember frames of the stacks
    dumped before the limit (the innermost ones vary from one dump to the next)."""
    stacks.seek(0)
    dumps = stacks.read().split("(most recent call first):")[1:]
    frames = _ember_frames(dumps[-1]) if dumps else []
    return " > ".join(frames[:2]) or "outside ember"


def _ember_frames(dump: str) -> list[str]:
    """`file:function` of each Ember frame of one dump, outermost first."""
    out = []
    for line in dump.splitlines():
        line = line.strip()
        if line.startswith('File "') and line[6:].startswith(EMBER_DIRS):
            path, _, rest = line[6:].partition('", line ')
            out.append(f"{Path(path).name}:{rest.partition(' in ')[2]}")
    return out[::-1]


class Worker:
    """A child process running checks one at a time, restarted after a hang or crash."""

    def __init__(self, timeout: float):
        self.timeout = timeout
        self.proc: Any = None
        self.stacks = tempfile.TemporaryFile("w+")

    def _start(self) -> None:
        ctx = mp.get_context("fork")
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_serve, args=(child, self.stacks), daemon=True)
        self.proc.start()
        child.close()  # so that the worker's death reads as end of file here

    def run(self, check: Callable[..., Result], *args: Any, timeout: float | None = None
            ) -> Result:
        if self.proc is None or not self.proc.is_alive():
            self._start()
        limit = timeout or self.timeout
        self.conn.send((check, args, limit))
        if not self.conn.poll(limit):
            self.close()
            return Result(Outcome.HANG, f"hang in {_stuck_at(self.stacks)}",
                          f"no answer within {limit:g} s")
        try:
            return self.conn.recv()
        except EOFError:
            self.proc.join()
            code = self.proc.exitcode
            return Result(Outcome.TRACEBACK, f"worker died (exit {code})", f"exit code {code}")

    def close(self) -> None:
        if self.proc is not None and self.proc.is_alive():
            self.proc.kill()
            self.proc.join()

    def __enter__(self) -> Worker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def quiet_env() -> None:
    """Interpret kernels, and keep generated code out of the user's cache."""
    os.environ.setdefault("TRITON_INTERPRET", "1")
    os.environ.setdefault("EMBER_CACHE_DIR", str(Path("/tmp") / f"ember-fuzz-{os.getuid()}"))


# ---- minimizing a reproducer --------------------------------------------------------

def minimize(src: str, same: Callable[[str], bool], budget: int = 200) -> str:
    """A shorter source for which `same` still holds: delete chunks of lines, then
    of tokens, greedily, within `budget` trials. The result is checked once more
    at the end (the tree under test may change during a campaign)."""
    from .mutate import tokens
    original, trials = src, [0]

    def holds(candidate: str) -> bool:
        trials[0] += 1
        return trials[0] <= budget and same(candidate)

    for split in (lambda s: s.splitlines(keepends=True), tokens):
        parts = split(src)
        chunk = max(1, len(parts) // 2)
        while chunk >= 1 and trials[0] < budget:
            parts, chunk = _shrink(parts, chunk, holds)
        src = "".join(parts)
    return src if src == original or same(src) else original


def _shrink(parts: list[str], chunk: int, holds: Callable[[str], bool]
            ) -> tuple[list[str], int]:
    """One pass deleting `chunk` parts at a time; halve the chunk when nothing goes."""
    i, removed = 0, False
    while i < len(parts):
        trial = parts[:i] + parts[i + chunk:]
        if trial and not all(p.isspace() for p in parts[i:i + chunk]) and holds("".join(trial)):
            parts, removed = trial, True
        else:
            i += chunk
    return parts, chunk if removed and chunk > 1 else chunk // 2
