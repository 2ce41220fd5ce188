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

# `ember compile`: a float axis reaches a tuple index in split.
SPLIT_FLOAT_AXIS = """\
model M {
  def forward(x: f32[4]) {
    let a, b = split(x, 2, axis=-0.5)
    return a
  }
}
"""

# `ember compile`: a dimension beyond 2^63 overflows slice_length in split.
SPLIT_HUGE_DIM = """\
model M {
  def forward(x: f32[40000000000000000000000000000000]) {
    let a, b = split(x, 2)
    return a
  }
}
"""

# `ember compile --emit triton`: concat of one tensor with a symbolic dim.
CONCAT_ONE_SYMBOLIC = """\
model M {
  def forward(x: f32[B, 4]) { return concat(x) }
}
"""

# `ember run --train --backend triton`: dropout of a 0-d tensor (tl.rand of an int).
DROPOUT_SCALAR = """\
model M {
  def forward(x: f32[]) { return dropout(x, p=0.1) }
}
"""

# `ember run --backend triton`: softmax over a one-element axis made by indexing a
# full reduction with None.
SOFTMAX_OF_REDUCED = """\
model M {
  def forward(x: f32[2]) { return softmax(max(x)[None]) }
}
"""

# `ember run --backend triton`: max_pool2d over a size-1 spatial axis, fused with a
# broadcasting division.
POOL_SIZE_1_BROADCAST = """\
model M {
  def forward(x: f32[2, 7, 1, 5], y: f32[1, 5]) {
    return max_pool2d(x / y, 3, stride=3, padding=(1, 0))
  }
}
"""

_INTERPRETER = "InterpreterError in triton_backend.py:__call__: "

KNOWN: dict[str, str] = {
    "hang in api.py:compile_program > lower.py:lower": HUGE_LAYER_ARRAY,
    "TypeError in builtins.py:split: tuple indices must be integers or slices, not float":
        SPLIT_FLOAT_AXIS,
    "OverflowError in shapes.py:slice_length: Python int too large to convert to C ssize_t":
        SPLIT_HUGE_DIM,
    "TypeError in writer.py:_concat: unsupported operand type(s) for -: str and int":
        CONCAT_ONE_SYMBOLIC,
    _INTERPRETER + "AttributeError(int object has no attribute to": DROPOUT_SCALAR,
    _INTERPRETER + "TypeError(ufunc bitwise_and not supported for the input type":
        SOFTMAX_OF_REDUCED,
    _INTERPRETER + "ValueError(Mask argument cannot be block type if pointer arg":
        POOL_SIZE_1_BROADCAST,
}
