"""Giving memory back: the C allocator keeps what Python and torch free.

glibc's malloc keeps freed blocks in its arenas for reuse, so a phase's temporaries (the
statistics and baseline prune of a fitness engine's set-up) stay resident after they are gone:
745 MB of 1.8 GB on the bundled model (bench/HISTORY.md, issue 16). `malloc_trim` returns them
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


class _MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena",
            "ordblks",
            "smblks",
            "hblks",
            "hblkhd",
            "usmblks",
            "fsmblks",
            "uordblks",
            "fordblks",
            "keepcost",
        )
    ]


@functools.cache
def _mallinfo2() -> object | None:
    if _malloc_trim() is None:
        return None
    try:
        fn = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallinfo2
    except (OSError, AttributeError):  # glibc before 2.33
        return None
    fn.restype = _MallInfo2
    return fn


def free_heap_bytes() -> int | None:
    """Bytes the allocator holds free (glibc 2.33+), or None where it cannot tell."""
    info = _mallinfo2()
    return None if info is None else int(info().fordblks)  # type: ignore[operator]


def release_free_memory(*, above: int = 0) -> None:
    """Return the allocator's free memory to the system (glibc); a no-op elsewhere.

    With `above`, only when it holds more than that many free bytes: trimming after every
    small phase would return pages the next one faults right back in (12% slower search
    evaluations on the bundled model when trimmed every time)."""
    trim = _malloc_trim()
    if trim is None:
        return
    if above:
        free = free_heap_bytes()
        if free is not None and free <= above:
            return
    trim(0)  # type: ignore[operator]
