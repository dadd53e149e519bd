"""Triton's jit, applied when a kernel module is imported.

Triton reads TRITON_INTERPRET when it jits a function, and its own helpers (tl.sum, tl.max) are
jitted when Triton is imported: a process runs every kernel either compiled for the GPU or
interpreted on the CPU, never both. The CPU tests set TRITON_INTERPRET=1 before anything imports
Triton (tests/conftest.py); the compile-only checks run in a process of their own.
"""

import os
from collections.abc import Callable

try:
    import triton
except ImportError:  # the torch references need no Triton
    triton = None

INTERPRETED = os.environ.get("TRITON_INTERPRET", "0") == "1"


def jit(fn: Callable) -> object | None:
    """`triton.jit(fn)`, or None without Triton."""
    return None if triton is None else triton.jit(fn)
