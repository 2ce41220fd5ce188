"""A fuzz campaign: mutants through compile, random models through every evaluator.

    cd tests && python -m fuzz.campaign --mutants 10000 --models 1000

prints the count of each outcome per kind of case, then one minimized reproducer
per distinct failure (failures already listed in fuzz/known.py are marked as
known). `make fuzz N=...` runs it with N mutants and N/10 models.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from itertools import islice

from .diff import check_model
from .gen import Program, generate
from .harness import Outcome, Result, Worker, check_source, minimize, quiet_env
from .known import KNOWN
from .mutate import mutants

COMPILE_TIMEOUT = 20.0   # seconds for one mutant (compile, codegen, a small oracle run)
MODEL_TIMEOUT = 300.0    # seconds for one random model through every backend


@dataclass
class Tally:
    """Outcome counts, and the first case of each distinct failure."""

    kind: str
    counts: Counter[Outcome] = field(default_factory=Counter)
    per_failure: Counter[str] = field(default_factory=Counter)
    first: dict[str, tuple[Result, Callable[[str], Result], str]] = field(default_factory=dict)

    def add(self, result: Result, rerun: Callable[[str], Result], src: str) -> None:
        self.counts[result.outcome] += 1
        if result.failed:
            self.per_failure[result.signature] += 1
            self.first.setdefault(result.signature, (result, rerun, src))

    def line(self) -> str:
        parts = ", ".join(f"{o.value} {self.counts[o]}" for o in Outcome)
        return f"{self.kind}: {sum(self.counts.values())} cases: {parts}"


def run_mutants(worker: Worker, n: int, seed: int, progress: bool = False,
                timeout: float = COMPILE_TIMEOUT) -> Tally:
    tally = Tally("mutants")
    for k, (_, src, train) in enumerate(islice(mutants(seed), n)):
        def rerun(text: str, train: bool = train) -> Result:
            return worker.run(check_source, text, train, timeout=timeout)
        tally.add(rerun(src), rerun, src)
        _progress(progress, k, tally)
    return tally


def run_models(worker: Worker, n: int, seed: int, triton_every: int,
               progress: bool = False, timeout: float = MODEL_TIMEOUT) -> Tally:
    tally = Tally("random models")
    for k in range(n):
        prog, triton = generate(seed + k), k % triton_every == 0 if triton_every else False

        def rerun(text: str, prog: Program = prog, triton: bool = triton) -> Result:
            return worker.run(check_model, replace(prog, src=text), triton, timeout=timeout)
        tally.add(rerun(prog.src), rerun, prog.src)
        _progress(progress, k, tally)
    return tally


def _progress(on: bool, k: int, tally: Tally) -> None:
    if on and (k + 1) % 250 == 0:
        print(f"  [{time.strftime('%H:%M:%S')}] {tally.line()}", file=sys.stderr, flush=True)


def failures(tally: Tally, shrink: bool = True) -> Iterator[tuple[str, Result, str]]:
    """(signature, result, reproducer) per distinct failure, minimized if asked. A
    failure that does not happen again (the tree changed under the campaign) says so."""
    for sig, (result, rerun, src) in sorted(tally.first.items()):
        if rerun(src).signature != sig:
            sig += " (did not reproduce)"
        elif shrink:
            # a trial that still hangs costs the whole time limit: fewer of them
            budget = 20 if result.outcome is Outcome.HANG else 200
            src = minimize(src, lambda s, sig=sig, rerun=rerun: rerun(s).signature == sig, budget)
        yield sig, result, src


def report(tallies: list[Tally], shrink: bool = True) -> int:
    """Print counts and reproducers; the number of distinct unknown failures."""
    unknown = 0
    for t in tallies:
        print(t.line())
    for t in tallies:
        for sig, result, src in failures(t, shrink):
            known = sig in KNOWN
            unknown += not known and not sig.endswith("(did not reproduce)")
            n = t.per_failure[sig.removesuffix(" (did not reproduce)")]
            print(f"\n=== {t.kind}, {n} cases: {sig}{' (known, open)' if known else ''}\n"
                  f"{result.detail}")
            print(f"--- reproducer ---\n{src}")
    return unknown


def recheck_known(worker: Worker) -> dict[str, bool]:
    """For each known failure, whether its reproducer still fails that way."""
    return {sig: _still_fails(worker, sig, src) for sig, src in KNOWN.items()}


def _still_fails(worker: Worker, sig: str, src: str) -> bool:
    """Through compile, then through every evaluator, in eval and train mode."""
    prog = Program(src, {"B": 2} if "B," in src else {}, False)
    for train in (False, True):
        if worker.run(check_source, src, train).signature == sig:
            return True
        result = worker.run(check_model, replace(prog, train=train), True, timeout=MODEL_TIMEOUT)
        if result.signature == sig:
            return True
    return False


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--mutants", type=int, default=1000)
    p.add_argument("--models", type=int, default=100)
    p.add_argument("--triton-every", type=int, default=1,
                   help="run every k-th random model through the Triton interpreter (0: none)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-minimize", action="store_true")
    p.add_argument("--known", action="store_true", help="only recheck the known failures")
    args = p.parse_args(argv)
    quiet_env()
    with Worker(COMPILE_TIMEOUT) as worker:
        if args.known:
            for sig, still in recheck_known(worker).items():
                print(f"{'open ' if still else 'FIXED'} {sig}")
            return 0
        tallies = [run_mutants(worker, args.mutants, args.seed, progress=True),
                   run_models(worker, args.models, args.seed, args.triton_every, progress=True)]
        unknown = report(tallies, shrink=not args.no_minimize)
    return 1 if unknown else 0


if __name__ == "__main__":
    sys.exit(main())
