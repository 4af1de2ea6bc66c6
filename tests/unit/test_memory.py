"""Freed memory goes back to the system after a phase (glibc keeps it otherwise)."""

import sys
from pathlib import Path

import pytest
import torch

from optishear.model.memory import _malloc_trim, release_free_memory


def _anon_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no RssAnon")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RssAnon and glibc: Linux")
def test_temporaries_of_a_phase_are_returned_to_the_system() -> None:
    assert _malloc_trim() is not None  # glibc, as on every machine this runs on
    # Blocks below malloc's mmap threshold come from its heap, which keeps them once freed;
    # interleaved with survivors, the heap's top cannot simply shrink.
    blocks = [torch.ones(16 * 1024) for _ in range(4000)]  # 64 KiB each, 256 MB
    survivors = blocks[::50]
    del blocks
    before = _anon_bytes()
    release_free_memory()
    after = _anon_bytes()
    assert before - after > 100 << 20, (before, after)
    assert all(float(t.sum()) == 16 * 1024 for t in survivors)  # nothing live was touched
