"""Triton kernels compiled on first use, once per interpreter mode.

`triton.jit` reads TRITON_INTERPRET when it is applied, so jitting at import would freeze the
mode of whoever imported Triton first. Deferring it lets the tests switch the interpreter on
per test, on the CPU, in the same process as everything else.
"""

import functools
import os
from collections.abc import Callable

try:
    import triton
except ImportError:  # the torch references need no Triton
    triton = None


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def lazy_jit(fn: Callable) -> Callable[[], object]:
    """`kernel = lazy_jit(fn)`; `kernel()[grid](...)` launches `fn` jitted for the current mode."""

    @functools.cache
    def build(interpret: bool):  # `interpret` only keys the cache
        return triton.jit(fn)

    return lambda: build(interpreting())
