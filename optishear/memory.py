"""Giving memory back: the C allocator keeps what Python and torch free.

glibc's malloc keeps freed blocks in its arenas for reuse, so a phase's temporaries (the
statistics and baseline prune of a fitness engine's set-up) stay resident after they are gone:
745 MB of 1.8 GB on the bundled model (bench/RESULTS.md, issue 16). `malloc_trim` returns them
to the system. Elsewhere (macOS, musl) this does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import sys


@functools.cache
def _malloc_trim() -> object | None:
    if not sys.platform.startswith("linux"):
        return None
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
        return libc.malloc_trim
    except (OSError, AttributeError):  # not glibc
        return None


def release_free_memory() -> None:
    """Return the allocator's free memory to the system (glibc); a no-op elsewhere."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)  # type: ignore[operator]
