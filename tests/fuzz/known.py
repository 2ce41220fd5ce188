"""Known open failures: signature -> a minimal reproducer.

A failure listed here is still counted and printed by every campaign, marked
"known, open", and listed in docs/fuzzing.md; the smoke test fails on any
failure not listed. Remove an entry when its fix lands, so that the smoke test
guards the fix. A hang's signature names only the pass it is stuck in, so one
entry may stand for several hangs in that pass: the campaign lists each one.
"""

from __future__ import annotations

# `ember compile` does not return: the array of 10^8 layers is built eagerly.
HUGE_LAYER_ARRAY = """\
layer Block(d: int) {
  def forward(x: f32[d]) -> f32[d] { return x }
}
model M {
  layer blocks: Block(4)[100000000]
  def forward(x: f32[4]) -> f32[4] { return x }
}
"""

# `ember run --backend triton` raises inside the interpreter (softmax over a
# one-element axis made by indexing a full reduction with None).
SOFTMAX_OF_REDUCED = """\
model M {
  def forward(x: f32[2]) { return softmax(max(x)[None]) }
}
"""

KNOWN: dict[str, str] = {
    "hang in api.py:compile_program > lower.py:lower": HUGE_LAYER_ARRAY,
    "InterpreterError in triton_backend.py:__call__: TypeError(\"ufunc 'bitwise_and' "
    "not supported for the input t": SOFTMAX_OF_REDUCED,
}
