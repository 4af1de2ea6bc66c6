"""Retention of the checkpoint store (OPTISHEAR_KEEP_CHECKPOINTS, OPTISHEAR_STORE_MAX_BYTES):
which succeeded checkpoints go, and phase 1 of their delete. Phase 2, the files and the rows,
is service.housekeeping's, as for any other delete."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Collection, Sequence

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from service.checkpoint_rows import ACTIVE, live_checkpoint, update_succeeded
from service.db import utcnow
from service.settings import ServiceSettings
from service.tables import Checkpoint, JobStatus, Measurement, Search

logger = logging.getLogger(__name__)


def mark_for_retention(
    reads: sessionmaker[Session],
    writes: sessionmaker[Session],
    settings: ServiceSettings,
    *,
    protect: Collection[uuid.UUID] = (),
) -> list[tuple[uuid.UUID, str]]:
    """Mark (`deleting_at`) the oldest succeeded checkpoints beyond either limit, oldest
    first, each with why. The newest one, and those in `protect`, always stay."""
    keep, cap = settings.keep_checkpoints, settings.store_max_bytes
    if keep is None and cap is None:
        return []
    finished = func.coalesce(Checkpoint.finished_at, Checkpoint.created_at)
    with reads() as session:
        live = session.execute(
            select(Checkpoint.id, Checkpoint.size_bytes, Checkpoint.compact_bytes, finished)
            .join(Search, Search.id == Checkpoint.search_id)
            .where(Checkpoint.status == JobStatus.SUCCEEDED, live_checkpoint())
            .order_by(finished.desc(), Checkpoint.id.desc())
        ).all()
        measured = set(
            session.scalars(select(Measurement.checkpoint_id).where(Measurement.status.in_(ACTIVE)))
        )
    if not live:
        return []
    sizes = {row[0]: (row[1] or 0) + (row[2] or 0) for row in live}
    newest = [row[0] for row in live]  # newest first
    protected = {newest[0], *protect, *measured}  # being measured: kept for now
    chosen = victims(newest, sizes, keep, cap, protected)
    now = utcnow()
    marked: list[tuple[uuid.UUID, str]] = []
    with writes.begin() as session:
        for checkpoint_id, why in chosen:
            if update_succeeded(session, checkpoint_id, deleting_at=now):
                marked.append((checkpoint_id, why))
    return marked


def victims(
    newest_first: Sequence[uuid.UUID],
    sizes: dict[uuid.UUID, int],
    keep: int | None,
    cap: int | None,
    protected: Collection[uuid.UUID],
) -> list[tuple[uuid.UUID, str]]:
    """The checkpoints retention deletes, oldest first, each with why."""
    chosen: dict[uuid.UUID, str] = {}
    if keep is not None:
        for checkpoint_id in newest_first[keep:]:
            if checkpoint_id not in protected:
                chosen[checkpoint_id] = f"beyond the newest {keep} (OPTISHEAR_KEEP_CHECKPOINTS)"
    if cap is not None:
        left = [c for c in newest_first if c not in chosen]
        total = sum(sizes[c] for c in left)
        for checkpoint_id in reversed(left):  # oldest first
            if total <= cap:
                break
            if checkpoint_id in protected:
                continue
            chosen[checkpoint_id] = f"the store is over {cap} bytes (OPTISHEAR_STORE_MAX_BYTES)"
            total -= sizes[checkpoint_id]
        if total > cap:
            logger.warning(
                "retention: the checkpoints it must keep hold %d bytes, over the %d-byte cap",
                total,
                cap,
            )
    order = {c: i for i, c in enumerate(reversed(newest_first))}
    return sorted(chosen.items(), key=lambda item: order[item[0]])
