"""Hidden states that outgrow memory: tensors backed by an unlinked temporary file.

A sequential prune keeps every calibration sequence's hidden states between two blocks, twice
(a block's inputs and its outputs): 2 x 604 MB at 128 x 2048 tokens on the bundled model, 2 x
4.3 GB on a 7B one, growing with the calibration. Past a budget the two buffers live in
memory-mapped files instead: their pages are the kernel's page cache, which it writes back
and evicts under pressure, so the process's own (anonymous) memory stays that of one batch.
The file is unlinked as soon as it is mapped, so nothing is left behind, even after a crash.
"""

from __future__ import annotations

import math
import os
import tempfile
from pathlib import Path

import torch
from torch import Tensor

# Two buffers of this many bytes in all stay in memory; PruneConfig.hidden_memory_gib sets it.
DEFAULT_BUDGET_BYTES = 1 << 30


def spilled_empty(shape: tuple[int, ...], dtype: torch.dtype, directory: Path) -> Tensor:
    """An uninitialised CPU tensor whose storage is a temporary file in `directory`."""
    numel = math.prod(shape)
    fd, name = tempfile.mkstemp(prefix="optishear-hidden-", suffix=".bin", dir=directory)
    os.close(fd)
    try:
        # shared=True maps the file itself (grown, sparse, to the size), not a private copy
        flat = torch.from_file(name, shared=True, size=max(numel, 1), dtype=dtype)
    finally:
        Path(name).unlink()  # the mapping keeps the inode alive until the tensor is freed
    return flat[:numel].view(shape)


def spill_directory(hidden: Tensor) -> Path | None:
    """Where `hidden` is spilled, or None for a tensor in memory."""
    name = hidden.untyped_storage().filename
    return None if name is None else Path(name).parent


def hidden_buffer(
    shape: tuple[int, ...],
    dtype: torch.dtype,
    device: torch.device,
    *,
    budget_bytes: float,
    directory: Path | None = None,
) -> Tensor:
    """A buffer for the hidden states of every calibration sequence.

    In memory while the two buffers a sequential pass holds fit `budget_bytes`; else (on the
    CPU) in a file under `directory` (the system's temporary folder, TMPDIR, by default).
    """
    nbytes = math.prod(shape) * dtype.itemsize
    if device.type != "cpu" or 2 * nbytes <= budget_bytes:
        return torch.empty(shape, dtype=dtype, device=device)
    return spilled_empty(shape, dtype, directory or Path(tempfile.gettempdir()))


def empty_like_hidden(hidden: Tensor) -> Tensor:
    """A buffer like `hidden`, spilled where `hidden` is: a block's outputs follow its inputs."""
    directory = spill_directory(hidden)
    if directory is None:
        return torch.empty_like(hidden)
    return spilled_empty(tuple(hidden.shape), hidden.dtype, directory)
