"""A fixed-seed fuzz smoke (tests/fuzz/), and tests of the harness itself.

The smoke sends a few hundred mutants of the example models through compile,
code generation and a small oracle run, a few dozen random models through the
oracle and the torch evaluator, and a handful through the Triton interpreter,
fused and unfused, in float32 and float64. It fails on any failure (traceback,
hang, unlocated error, mismatch) not listed as known and open in
tests/fuzz/known.py, and on any error from a generated model, which is valid by
construction. `make fuzz N=...` runs the same cases at length.
"""

from __future__ import annotations

import os
import time
from itertools import islice

import numpy as np
import pytest
from fuzz import campaign
from fuzz.diff import differs
from fuzz.gen import generate
from fuzz.harness import Outcome, Result, Worker, check_source, guarded, minimize, quiet_env
from fuzz.known import KNOWN
from fuzz.mutate import mutants
from util import MODELS

from ember.ir.loc import DSLError, Loc

MUTANTS, N_MODELS, TRITON_MODELS = 200, 50, 8


@pytest.fixture(scope="module")
def worker():
    quiet_env()
    with Worker(timeout=5.0) as w:
        yield w


def _unknown(tally: campaign.Tally) -> dict[str, str]:
    return {sig: result.detail for sig, (result, _, _) in tally.first.items() if sig not in KNOWN}


def test_mutants_never_crash_or_hang(worker):
    tally = campaign.run_mutants(worker, MUTANTS, seed=0, timeout=5.0)
    assert _unknown(tally) == {}
    assert tally.counts[Outcome.LOCATED] > MUTANTS // 2
    assert tally.counts[Outcome.SUCCESS] > 0


def test_random_models_agree_on_oracle_and_torch(worker):
    tally = campaign.run_models(worker, N_MODELS, seed=1000, triton_every=0, timeout=20.0)
    assert _unknown(tally) == {}
    assert tally.counts[Outcome.LOCATED] == 0


def test_random_models_agree_on_triton(worker):
    tally = campaign.run_models(worker, TRITON_MODELS, seed=2000, triton_every=1, timeout=60.0)
    assert _unknown(tally) == {}
    assert tally.counts[Outcome.LOCATED] == 0


def test_generated_models_are_reproducible_and_varied():
    assert generate(5).src == generate(5).src
    text = "".join(generate(s).src for s in range(200))
    for piece in ("conv2d(", "_pool2d(", "for t in range", "@", "argmax(", "dropout(",
                  "embedding(", "concat(", "reshape(", "[:, ", "sum(", "where(", "def f"):
        assert piece in text, piece


def _mutants(seed: int, n: int) -> list[str]:
    return [src for _, src, _ in islice(mutants(seed), n)]


def test_mutants_are_reproducible_and_edited():
    first = _mutants(3, 40)
    assert first == _mutants(3, 40)
    originals = {p.read_text() for p in MODELS.glob("*.ember")}
    assert len(set(first) - originals) > 35


# ---- the harness ------------------------------------------------------------------

def _sleep() -> Result:
    time.sleep(30)
    return Result(Outcome.SUCCESS)


def _die() -> Result:
    os._exit(9)


def _located() -> Result:
    raise DSLError("bad", Loc("fuzz.ember", 1, 2))


def _unlocated() -> Result:
    raise DSLError("bad")


def _bug() -> Result:
    return {}["missing"]


def test_outcomes_are_classified(worker):
    assert worker.run(_sleep, timeout=1).outcome is Outcome.HANG
    assert worker.run(_die).signature == "worker died (exit 9)"
    assert worker.run(_located).outcome is Outcome.LOCATED
    assert worker.run(_unlocated).outcome is Outcome.UNLOCATED
    bug = guarded(_bug)
    assert bug.outcome is Outcome.TRACEBACK and bug.signature.startswith("KeyError")
    assert worker.run(check_source, "model M {\n  def forward(x: f32[2]) { return x }\n}\n",
                      False).outcome is Outcome.SUCCESS


def test_differs_uses_the_dtype_tolerance():
    w = np.array([1.0, np.nan, np.inf, -np.inf], np.float32)
    assert differs(w.copy(), w) == ""
    assert differs(w + np.float32(5e-5), w) == ""
    assert "1 of 4" in differs(w + np.array([1e-3, 0, 0, 0], np.float32), w)
    assert "1 of 4" in differs(np.array([1.0, 0.0, np.inf, -np.inf], np.float32), w)
    assert differs(w.astype(np.float64), w) != ""
    assert "1 of 4" in differs(w.astype(np.float64) + [1e-9, 0, 0, 0], w.astype(np.float64))


def test_minimize_keeps_the_failure_and_shrinks():
    src = "a\nb\nneedle x\nc\nd\n"
    assert minimize(src, lambda s: "needle" in s).strip() == "needle"
