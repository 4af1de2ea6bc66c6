"""Compact archives of exports (optishear.artifacts.compact), built on their first `?format=compact`
download from the stored tar, once however many requests race for it.

The build holds the store's compact lock (an flock: across threads and processes), writes
`<id>.compact` through a temporary file and a rename (optishear.artifacts.compact.pack_tar), then records
its size and sha256 on the row only if no delete has started meanwhile; otherwise it removes
the file itself. A delete marks the row before it unlinks the files, so either the delete sees
the renamed file or the build sees the mark: no compact archive outlives its checkpoint.
optishear.artifacts.compact imports no torch: the API process builds it.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from optishear.artifacts.compact import pack_tar
from optishear.core.errors import DataError, OptiShearError
from optishear.core.files import sha256_file
from service import db
from service.checkpoint_rows import update_succeeded
from service.store import CheckpointStore
from service.tables import Checkpoint

logger = logging.getLogger(__name__)

SUFFIX = ".optishear-compact"  # the downloaded file's name ends so


class CompactGoneError(OptiShearError):
    """The checkpoint was deleted (or its archive lost) while its compact archive was built."""


@dataclass(frozen=True)
class CompactFile:
    path: Path
    sha256: str
    size: int


def recorded(
    sessions: sessionmaker[Session], store: CheckpointStore, checkpoint_id: uuid.UUID
) -> CompactFile | None:
    """The compact archive, if it is built and recorded (its size matching the row's)."""
    with sessions() as session:
        row = session.execute(
            select(Checkpoint.compact_sha256, Checkpoint.compact_bytes).where(
                Checkpoint.id == checkpoint_id, Checkpoint.deleting_at.is_(None)
            )
        ).first()
    path = store.compact(checkpoint_id)
    if row is None or row[0] is None or path is None:
        return None
    try:
        if path.stat().st_size != row[1]:
            return None
    except FileNotFoundError:
        return None
    return CompactFile(path, row[0], int(row[1]))


def ensure_compact(
    sessions: sessionmaker[Session], store: CheckpointStore, checkpoint_id: uuid.UUID
) -> CompactFile:
    """The compact archive of a succeeded export, built now if it is not yet (see above).

    Raises CompactGoneError when the tar has left the store or the checkpoint is being
    deleted; optishear's DataError when the tar cannot be read; OSError from the disk."""
    found = recorded(sessions, store, checkpoint_id)
    if found is not None:
        return found
    with store.compact_lock():
        found = recorded(sessions, store, checkpoint_id)  # built while we waited for the lock
        if found is not None:
            return found
        tar = store.archive(checkpoint_id)
        if tar is None:
            raise CompactGoneError(f"checkpoint {checkpoint_id}: its archive is missing")
        dest = store.compact_destination(checkpoint_id)
        try:
            report = pack_tar(tar, dest)
        except DataError:
            if store.archive(checkpoint_id) is None:  # a delete unlinked it before we read it
                raise CompactGoneError(
                    f"checkpoint {checkpoint_id} was deleted meanwhile"
                ) from None
            raise
        digest = sha256_file(dest)
        with db.for_writing(sessions).begin() as session:
            stored = update_succeeded(
                session, checkpoint_id, compact_bytes=report.compact_bytes, compact_sha256=digest
            )
        if not stored:
            store.unlink(dest)
            raise CompactGoneError(f"checkpoint {checkpoint_id} was deleted meanwhile")
    logger.info(
        "checkpoint %s: compact archive built in %.1f s, %d -> %d bytes (%.0f%%), "
        "%d of %d tensors packed",
        checkpoint_id,
        report.seconds,
        report.dense_bytes,
        report.compact_bytes,
        100 * report.ratio,
        report.packed_tensors,
        report.tensors,
    )
    return CompactFile(dest, digest, report.compact_bytes)
