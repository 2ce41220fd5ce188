"""Test configuration: Triton kernels run in the interpreter (no GPU here).

TRITON_INTERPRET is read when a @triton.jit decorator runs, so it is set
before anything imports triton.
"""

import os

os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
