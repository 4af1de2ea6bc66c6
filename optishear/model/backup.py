"""A transient copy of some weights on disk, to undo work done on them in place.

The fitness engine keeps its model's weights once (optishear.model.overlay). A few of its steps still
prune the model in place: the baseline prune of its set-up, and candidates scored as shipped
(prune_candidate, with a refit). Those weights come back from a temporary file, written through
the page cache and read back into the same tensors, so a second copy never sits in the
process's own memory, nor on the GPU.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import Tensor


def _host_bytes(t: Tensor) -> Tensor:
    """A contiguous CPU byte view of `t` (a copy when it lives on another device)."""
    return t.detach().contiguous().cpu().view(torch.uint8).reshape(-1)


@contextmanager
def restored_after(tensors: Sequence[Tensor], folder: Path | None = None) -> Iterator[None]:
    """Whatever is done to `tensors` in place inside the block is undone, bit for bit, after it.

    The file is unlinked at once (it lives as long as its handle), so it never outlives the
    process, whatever stops it.
    """
    with tempfile.TemporaryFile(dir=folder, prefix="optishear-backup-") as f:
        for t in tensors:
            f.write(_host_bytes(t).numpy().tobytes())
        f.flush()
        try:
            yield
        finally:
            f.seek(0)
            with torch.no_grad():
                for t in tensors:
                    buf = torch.empty(t.numel() * t.element_size(), dtype=torch.uint8)
                    if f.readinto(memoryview(buf.numpy())) != buf.numel():
                        raise OSError("the weight backup file came back short")
                    t.copy_(buf.view(t.dtype).view(t.shape))
