"""The layer database: every prunable layer pre-pruned at every level of the allocation stage.

For each (layer, level) it holds the layer's mask (mask-only) or its pruned and updated weight
(refit: SparseGPT's OBS update of the survivors, with the mask imposed), computed once per
search from the engine's statistics. A per-layer candidate is then a swap of stored layers and
one forward pass: no scoring, no masking, no refit per candidate.

Entries live in memory, or on disk as one memory-mapped file per layer under a folder (the
search's), whichever the caller chooses; `estimate_bytes` says what either costs before any
work starts. Level 0 (a dense layer) is never stored: the engine's dense backup serves it.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch import Tensor

from optishear.core.errors import ConfigError
from optishear.core.genome import Genome
from optishear.core.heartbeat import Heartbeat
from optishear.core.patterns import Pattern
from optishear.methods.masks import prune_mask
from optishear.methods.meta import meta_log_score
from optishear.methods.sparsegpt import sparsegpt_prune
from optishear.model.overlay import WeightOverlay

logger = logging.getLogger(__name__)

Storage = Literal["memory", "disk"]
_NUMPY = {torch.float32: np.float32, torch.float16: np.float16, torch.bfloat16: np.uint16}


def estimate_bytes(
    shapes: Sequence[tuple[int, int]], levels: Sequence[float], refit: bool, dtype: torch.dtype
) -> int:
    """Bytes the database takes: per stored level, one byte per weight for a mask, or the
    weight's dtype size for a refit weight."""
    stored = sum(1 for r in levels if r > 0)
    per_weight = torch.empty((), dtype=dtype).element_size() if refit else 1
    return stored * per_weight * sum(a * b for a, b in shapes)


@dataclass(frozen=True)
class DatabaseInfo:
    """What the database is and what it cost, for logs and the search's summary."""

    layers: int
    levels: tuple[float, ...]
    refit: bool
    storage: Storage
    bytes: int
    seconds: float

    def describe(self) -> str:
        kind = "refit weights" if self.refit else "masks"
        return (
            f"layer database: {self.layers} layers x {sum(1 for r in self.levels if r > 0)} "
            f"levels of {kind}, {self.bytes / 2**30:.2f} GiB in {self.storage}, built in "
            f"{self.seconds:.1f} s"
        )


class LayerDatabase:
    """Stored layers by (layer position, level index)."""

    def __init__(
        self,
        shapes: Sequence[tuple[int, int]],
        levels: Sequence[float],
        *,
        refit: bool,
        dtype: torch.dtype,
        storage: Storage,
        folder: Path | None = None,
    ) -> None:
        if storage == "disk" and folder is None:
            raise ConfigError("a layer database on disk needs a folder")
        if refit and dtype not in _NUMPY:
            raise ConfigError(f"a refit layer database cannot store {dtype}")
        self.levels = tuple(levels)
        self.refit = refit
        self.dtype = dtype
        self.storage = storage
        self.folder = folder
        self._slot = {li: j for j, li in enumerate(i for i, r in enumerate(levels) if r > 0)}
        self._pruned: dict[tuple[int, int], int] = {}
        self._mem: dict[tuple[int, int], Tensor] = {}
        self._files: list[np.memmap] = []
        self.shapes = [tuple(s) for s in shapes]
        self.seconds = 0.0
        if storage == "disk":
            assert folder is not None
            folder.mkdir(parents=True, exist_ok=True)
            np_dtype = _NUMPY[dtype] if refit else np.bool_
            for pos, (rows, cols) in enumerate(self.shapes):
                self._files.append(
                    np.lib.format.open_memmap(
                        folder / f"layer{pos:04d}.npy",
                        mode="w+",
                        dtype=np_dtype,
                        shape=(len(self._slot), rows, cols),
                    )
                )

    def info(self) -> DatabaseInfo:
        return DatabaseInfo(
            len(self.shapes),
            self.levels,
            self.refit,
            self.storage,
            estimate_bytes(self.shapes, self.levels, self.refit, self.dtype),
            self.seconds,
        )

    def put(self, pos: int, level: int, value: Tensor, pruned: int) -> None:
        """Store a mask (bool, True = pruned) or a refit weight for (layer, level)."""
        self._pruned[(pos, level)] = pruned
        value = value.detach()
        if self.storage == "memory":
            self._mem[(pos, level)] = value.to("cpu", copy=True) if value.is_cuda else value
            return
        src = value.cpu()
        if self.refit and self.dtype == torch.bfloat16:
            src = src.view(torch.uint16)
        self._files[pos][self._slot[level]] = src.numpy()

    def get(self, pos: int, level: int) -> Tensor:
        if self.storage == "memory":
            return self._mem[(pos, level)]
        arr = torch.from_numpy(np.asarray(self._files[pos][self._slot[level]]))
        if self.refit and self.dtype == torch.bfloat16:
            arr = arr.view(torch.bfloat16)
        return arr

    def pruned(self, pos: int, level: int) -> int:
        return self._pruned.get((pos, level), 0)

    def close(self) -> None:
        """Free the entries; a disk database removes its files."""
        self._mem.clear()
        self._files.clear()
        if self.storage == "disk" and self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)


def choose_storage(setting: str, estimate: int, memory_limit: int) -> Storage:
    """'auto' keeps the database in memory when it fits under the limit, else on disk."""
    if setting in ("memory", "disk"):
        return setting  # type: ignore[return-value]
    return "memory" if estimate <= memory_limit else "disk"


@dataclass(frozen=True)
class DatabaseRequest:
    """The layer database an allocation search asks the engine for."""

    genome: Genome
    levels: tuple[float, ...]
    refit: bool = False
    # with refit: masks from the genome (then OBS-updated), or SparseGPT's own masks and update
    masks: Literal["genome", "sparsegpt"] = "genome"
    storage: Literal["auto", "memory", "disk"] = "auto"
    memory_bytes: int = 4 << 30
    folder: Path | None = None


@torch.no_grad()
def build_database(
    request: DatabaseRequest,
    dense: Sequence[Tensor],
    act_sq: Sequence[Tensor],
    hessians: list[Tensor] | None,
    pattern: Pattern,
    *,
    rho: Sequence[Tensor] | None = None,
) -> LayerDatabase:
    """Prune every layer at every level of `request` from its dense weight and statistics;
    with `hessians` (freed as the build goes), each stored weight carries the OBS update of
    the genome's mask, or (`masks="sparsegpt"`) is SparseGPT's own prune of the layer."""
    shapes = [(int(W.shape[0]), int(W.shape[1])) for W in dense]
    dtype = dense[0].dtype
    size = estimate_bytes(shapes, request.levels, request.refit, dtype)
    storage = choose_storage(request.storage, size, request.memory_bytes)
    folder = request.folder
    if storage == "disk":
        # a folder of its own inside the search's (or a temporary one): close() removes it
        parent = folder if folder is not None else Path(tempfile.gettempdir())
        parent.mkdir(parents=True, exist_ok=True)
        folder = Path(tempfile.mkdtemp(prefix="layer-database-", dir=parent))
    logger.info(
        "building the layer database: %d layers x %d levels, %.2f GiB in %s",
        len(shapes),
        sum(1 for r in request.levels if r > 0),
        size / 2**30,
        storage,
    )
    db = LayerDatabase(
        shapes, request.levels, refit=request.refit, dtype=dtype, storage=storage, folder=folder
    )
    start = time.perf_counter()
    own = request.masks == "sparsegpt" and hessians is not None  # SparseGPT's own masks
    beat = Heartbeat(logger, "building the layer database: layers", len(dense))
    with beat.ticking():  # a wide layer's refits at every level take a while
        _fill_database(db, beat, dense, act_sq, hessians, pattern, request, rho, own)
    db.seconds = time.perf_counter() - start
    logger.info("%s", db.info().describe())
    return db


def _fill_database(
    db: LayerDatabase,
    beat: Heartbeat,
    dense: Sequence[Tensor],
    act_sq: Sequence[Tensor],
    hessians: list[Tensor] | None,
    pattern: Pattern,
    request: DatabaseRequest,
    rho: Sequence[Tensor] | None,
    own: bool,
) -> None:
    for pos, W in enumerate(dense):
        beat.step(pos)
        score = (
            None
            if own
            else meta_log_score(W, act_sq[pos], request.genome, rho[pos] if rho else None)
        )
        for li, ratio in enumerate(request.levels):
            if ratio == 0:
                continue
            mask = None if score is None else prune_mask(score, ratio, pattern)
            if hessians is None:
                assert mask is not None
                db.put(pos, li, mask, int(mask.sum()))
                continue
            refit = W.clone()
            mask = sparsegpt_prune(refit, hessians[pos], ratio, pattern, fixed_mask=mask)
            db.put(pos, li, refit, int(mask.sum()))
        if hessians is not None:
            hessians[pos] = torch.empty(0)


@torch.no_grad()
def lay_levels(
    db: LayerDatabase,
    overlay: WeightOverlay,
    loaded: list[int | None],
    layer_sparsity: Sequence[float],
    total: int,
    device: torch.device,
) -> float:
    """Lay a per-layer candidate's stored layers over the model; returns its sparsity, its
    pruned weights over `total`, the weights of the prunable layers.

    `loaded` is the level each layer of the overlay carries now (None: unknown), updated in
    place: only the layers whose level changes are written.
    """
    index = {round(r, 9): i for i, r in enumerate(db.levels)}
    pruned = 0
    for pos, ratio in enumerate(layer_sparsity):
        try:
            level = index[round(ratio, 9)]
        except KeyError:
            raise ValueError(
                f"layer {pos} asks for sparsity {ratio:g}, which is not a level of the layer "
                f"database {db.levels}"
            ) from None
        if loaded[pos] != level:
            loaded[pos] = None  # consistent even if a copy fails
            if db.levels[level] == 0:
                overlay.set_mask(pos, None)
            elif db.refit:
                overlay.set_weight(pos, db.get(pos, level))
            else:
                overlay.set_mask(pos, db.get(pos, level).to(device, non_blocking=True))
            loaded[pos] = level
        pruned += db.pruned(pos, level)
    return pruned / total
