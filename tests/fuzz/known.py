"""Known open failures: signature -> a minimal reproducer.

A failure listed here is still counted and printed by every campaign, marked
"known, open", and listed in docs/fuzzing.md; the smoke test fails on any
failure not listed. Remove an entry when its fix lands, so that the smoke test
guards the fix. A hang's signature names only the pass it is stuck in, so one
entry may stand for several hangs in that pass: the campaign lists each one.
"""

from __future__ import annotations

# Every failure the campaigns found is fixed; their reproducers are regression
# tests in tests/test_fuzz_fixed.py.
KNOWN: dict[str, str] = {}
