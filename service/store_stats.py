"""What the checkpoint store holds: the numbers of GET /api/stats and `optishear store stats`,
and the inventory of `optishear store list`. Rows being deleted are left out."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from service.auth import OPEN, Principal
from service.checkpoint_rows import live_checkpoint
from service.schemas import RetentionRead, StatsRead, StatusCounts, StoreUsage
from service.settings import ServiceSettings
from service.store import CheckpointStore
from service.tables import Checkpoint, JobStatus, Search

STATUSES = frozenset(s.value for s in JobStatus)


@dataclass(frozen=True)
class CheckpointEntry:
    id: uuid.UUID
    status: str
    created_at: datetime
    size_bytes: int | None
    compact_bytes: int | None
    on_disk: int  # bytes of its files in the store now


@dataclass(frozen=True)
class SearchEntry:
    id: uuid.UUID
    status: str
    model: str
    created_at: datetime
    checkpoints: list[CheckpointEntry] = field(default_factory=list)

    @property
    def on_disk(self) -> int:
        return sum(c.on_disk for c in self.checkpoints)


def stats(
    reads: sessionmaker[Session],
    store: CheckpointStore,
    settings: ServiceSettings,
    principal: Principal = OPEN,
) -> StatsRead:
    """Searches and checkpoints by status, the store's bytes, the retention settings:
    everyone's for an admin (or the open API), else the caller's own."""
    owner = None if principal.admin else principal.owner
    mine = [] if owner is None else [Search.owner == owner]
    with reads() as session:
        searches = dict(
            session.execute(
                select(Search.status, func.count())
                .where(Search.deleting_at.is_(None), *mine)
                .group_by(Search.status)
            ).all()
        )
        checkpoints: dict[str, int] = {}
        recorded = 0
        for status, count, tar_bytes, compact_bytes in session.execute(
            select(
                Checkpoint.status,
                func.count(),
                func.coalesce(func.sum(Checkpoint.size_bytes), 0),
                func.coalesce(func.sum(Checkpoint.compact_bytes), 0),
            )
            .join(Search, Search.id == Checkpoint.search_id)
            .where(live_checkpoint(), *mine)
            .group_by(Checkpoint.status)
        ):
            checkpoints[status] = int(count)
            if status == JobStatus.SUCCEEDED:
                recorded = int(tar_bytes) + int(compact_bytes)
        own_ids = (
            []
            if owner is None
            else list(
                session.scalars(
                    select(Checkpoint.id)
                    .join(Search, Search.id == Checkpoint.search_id)
                    .where(live_checkpoint(), *mine)
                )
            )
        )
    if owner is None:
        disk = store.usage()
        usage = StoreUsage(
            recorded_bytes=recorded,
            disk_bytes=disk.bytes,
            archives=disk.archives,
            compact_archives=disk.compact_archives,
            staging_bytes=disk.staging_bytes,
        )
    else:
        tars = [p for i in own_ids if (p := store.archive(i)) is not None]
        compacts = [p for i in own_ids if (p := store.compact(i)) is not None]
        usage = StoreUsage(
            recorded_bytes=recorded,
            disk_bytes=sum(_size(p) for p in (*tars, *compacts)),
            archives=len(tars),
            compact_archives=len(compacts),
            staging_bytes=0,
        )
    return StatsRead(
        scope="all" if owner is None else "own",
        store=usage,
        searches=StatusCounts(**{k: v for k, v in searches.items() if k in STATUSES}),
        checkpoints=StatusCounts(**{k: v for k, v in checkpoints.items() if k in STATUSES}),
        retention=RetentionRead(
            keep_checkpoints=settings.keep_checkpoints,
            store_max_bytes=settings.store_max_bytes,
        ),
    )


def inventory(reads: sessionmaker[Session], store: CheckpointStore) -> list[SearchEntry]:
    """Every search (newest first) with its checkpoints and their bytes on disk, for
    `optishear store list`; rows being deleted are left out."""
    with reads() as session:
        searches = session.execute(
            select(Search.id, Search.status, Search.model, Search.created_at)
            .where(Search.deleting_at.is_(None))
            .order_by(Search.created_at.desc(), Search.id)
        ).all()
        by_search: dict[uuid.UUID, list[CheckpointEntry]] = {}
        for row in session.execute(
            select(
                Checkpoint.search_id,
                Checkpoint.id,
                Checkpoint.status,
                Checkpoint.created_at,
                Checkpoint.size_bytes,
                Checkpoint.compact_bytes,
            )
            .join(Search, Search.id == Checkpoint.search_id)
            .where(live_checkpoint())
            .order_by(Checkpoint.created_at, Checkpoint.id)
        ):
            by_search.setdefault(row[0], []).append(
                CheckpointEntry(
                    id=row[1],
                    status=row[2],
                    created_at=row[3],
                    size_bytes=row[4],
                    compact_bytes=row[5],
                    on_disk=_on_disk(store, row[1]),
                )
            )
    return [
        SearchEntry(
            id=s[0],
            status=s[1],
            model=s[2],
            created_at=s[3],
            checkpoints=by_search.get(s[0], []),
        )
        for s in searches
    ]


def _on_disk(store: CheckpointStore, checkpoint_id: uuid.UUID) -> int:
    paths = (store.archive(checkpoint_id), store.compact(checkpoint_id))
    return sum(_size(p) for p in paths if p is not None)


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0
