"""The file half of the store's sweep: files that no live row owns are removed, and succeeded
checkpoints whose archive has gone are marked failed. Functions of a session maker and the
store, called by service.housekeeping's sweep."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Collection, Iterable, Iterator
from dataclasses import dataclass
from itertools import islice

from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from service.checkpoint_rows import live_checkpoint, update_succeeded
from service.store import MISSING, CheckpointStore, StoreFile
from service.tables import Checkpoint, JobStatus, Search

logger = logging.getLogger(__name__)

_BATCH = 500  # ids per IN (...) query


@dataclass(frozen=True)
class Removed:
    """What a delete, the sweep or retention removed."""

    searches: int = 0
    checkpoints: int = 0
    files: int = 0
    bytes: int = 0

    def __add__(self, other: Removed) -> Removed:
        return Removed(
            self.searches + other.searches,
            self.checkpoints + other.checkpoints,
            self.files + other.files,
            self.bytes + other.bytes,
        )


def batched(items: Iterable[uuid.UUID]) -> Iterator[list[uuid.UUID]]:
    it = iter(items)
    while chunk := list(islice(it, _BATCH)):
        yield chunk


def remove_orphans(
    reads: sessionmaker[Session], writes: sessionmaker[Session], store: CheckpointStore
) -> Removed:
    """Remove the store's files that no live row owns.

    The folder is listed before the rows are read: an export's row exists before its file
    does, so a file listed here whose row is missing, finished without success, or being
    deleted can belong to nothing. A tar of a queued or running export stays (the export
    renames it in, then records it). A compact archive's temporary file is removed only
    while no build holds the store's compact lock."""
    files = store.files()
    rows = _rows_of(reads, {f.checkpoint_id for f in files})
    removed = Removed()
    forget: list[uuid.UUID] = []
    partials: list[StoreFile] = []
    for f in files:
        if f.kind == "compact-partial":
            partials.append(f)
            continue
        row = rows.get(f.checkpoint_id)
        if row is not None and _owns(row, f):
            continue
        size = store.unlink(f.path)
        removed += Removed(files=1, bytes=size)
        logger.info("removed %s from the store (%d bytes): %s", f.path.name, size, _why(row))
        if row is not None and f.kind == "tar":
            forget.append(f.checkpoint_id)
    if partials:
        with store.compact_lock(wait=False) as held:
            if held:  # no build is running: every temporary file is a crash's
                for f in partials:
                    size = store.unlink(f.path)
                    removed += Removed(files=1, bytes=size)
                    logger.info("removed %s, a compact build's leftover", f.path.name)
    if forget:  # rows that stay (failed, cancelled) name no file any more
        with writes.begin() as session:
            for chunk in batched(forget):
                session.execute(
                    update(Checkpoint)
                    .where(Checkpoint.id.in_(chunk), Checkpoint.status != JobStatus.SUCCEEDED)
                    .values(file_name=None, compact_bytes=None, compact_sha256=None)
                    .execution_options(synchronize_session=False)
                )
    return removed


def _rows_of(
    reads: sessionmaker[Session], ids: Collection[uuid.UUID]
) -> dict[uuid.UUID, tuple[str, bool]]:
    """(status, live) of these checkpoints, where rows exist."""
    rows: dict[uuid.UUID, tuple[str, bool]] = {}
    with reads() as session:
        for chunk in batched(ids):
            for ident, status, ck_deleting, search_deleting in session.execute(
                select(Checkpoint.id, Checkpoint.status, Checkpoint.deleting_at, Search.deleting_at)
                .join(Search, Search.id == Checkpoint.search_id)
                .where(Checkpoint.id.in_(chunk))
            ):
                rows[ident] = (status, ck_deleting is None and search_deleting is None)
    return rows


def forget_lost_archives(
    reads: sessionmaker[Session], writes: sessionmaker[Session], store: CheckpointStore
) -> int:
    """Succeeded checkpoints whose archive left the store (by hand) become failed, as the
    API already shows them; their compact archive goes too. Returns how many."""
    with reads() as session:
        ids = list(
            session.scalars(
                select(Checkpoint.id)
                .join(Search, Search.id == Checkpoint.search_id)
                .where(Checkpoint.status == JobStatus.SUCCEEDED, live_checkpoint())
            )
        )
    # Checked after the read: a row read as succeeded had its file before it committed.
    lost = [i for i in ids if store.archive(i) is None]
    n = 0
    for checkpoint_id in lost:
        with writes.begin() as session:
            done = update_succeeded(
                session,
                checkpoint_id,
                status=JobStatus.FAILED,
                error=MISSING,
                file_name=None,
                compact_bytes=None,
                compact_sha256=None,
            )
        if done:
            store.remove(checkpoint_id)  # its compact archive, if one was built
            logger.warning("checkpoint %s: its archive is missing; marked failed", checkpoint_id)
            n += 1
    return n


def _owns(row: tuple[str, bool], f: StoreFile) -> bool:
    """Whether a checkpoint row (status, live) owns this file of the store."""
    status, live = row
    if not live:
        return False
    if f.kind == "tar":  # queued or running: an export renames its tar in, then records it
        return status in (JobStatus.QUEUED, JobStatus.RUNNING, JobStatus.SUCCEEDED)
    return status == JobStatus.SUCCEEDED


def _why(row: tuple[str, bool] | None) -> str:
    if row is None:
        return "no checkpoint has this id"
    status, live = row
    return "its checkpoint is being deleted" if not live else f"its checkpoint is {status}"
