"""Checkpoint-store helpers for the housekeeping tests (tests/service/test_housekeeping.py,
test_delete_faults.py): seeded searches with exports, the store's files, row edits, and the
invariant that no live row points to a missing file and no file lacks a live row."""

from __future__ import annotations

import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

from seeding import seed_front_search
from sqlalchemy import func, select, update

from optishear.core.genome import Genome
from optishear.recipe.candidates import Candidate, Evaluation, Scored
from service import db
from service.housekeeping import Housekeeping
from service.settings import ServiceSettings
from service.store import CheckpointStore
from service.tables import Checkpoint, JobStatus, Search


def tiny_front(n: int) -> list[Scored]:
    return [
        Scored(
            Candidate(Genome.from_index(i), (0.5, 0.5)),
            Evaluation(0.1 * (i + 1), 0.5, 4, 0.1),
            gap=0.0,
        )
        for i in range(n)
    ]


def seed_exports(
    settings: ServiceSettings, statuses: list[str], *, owner: str = "", n: int | None = None
) -> tuple[uuid.UUID, list[uuid.UUID]]:
    """A succeeded search whose candidates 0..k-1 have one export each, of these statuses
    (oldest first; succeeded ones have an archive in the store)."""
    sessions = db_sessions(settings)  # migrated
    sid, _ = seed_front_search(
        settings,
        tiny_front(n or max(2, len(statuses))),
        owner=owner,
        checkpoints=[
            (i, s, 50.0 if s == "succeeded" else None, 0.5) for i, s in enumerate(statuses)
        ],
    )
    with sessions() as session:
        ids = list(
            session.scalars(
                select(Checkpoint.id)
                .where(Checkpoint.search_id == sid)
                .order_by(Checkpoint.created_at)
            )
        )
    return sid, ids


_ENGINES: dict[str, Any] = {}


def db_sessions(settings: ServiceSettings) -> Any:
    url = settings.resolved_database_url()
    if url not in _ENGINES:
        db.upgrade(url)  # as the API and runners do at start
        _ENGINES[url] = db.make_engine(url)
    return db.make_sessions(_ENGINES[url])


def dispose_engines() -> None:
    """After each test (an autouse fixture of the test modules)."""
    for engine in _ENGINES.values():
        engine.dispose()
    _ENGINES.clear()


def housekeeper(settings: ServiceSettings, **kw: Any) -> Housekeeping:
    return Housekeeping(db_sessions(settings), CheckpointStore.of(settings), settings, **kw)


def count_rows(settings: ServiceSettings, model: Any, *where: Any) -> int:
    with db_sessions(settings)() as session:
        return int(session.scalar(select(func.count()).select_from(model).where(*where)) or 0)


def store_dir(settings: ServiceSettings) -> Path:
    return settings.resolved_checkpoint_dir()


def store_files(settings: ServiceSettings) -> set[str]:
    return {p.name for p in store_dir(settings).iterdir() if not p.name.startswith(".compact.lock")}


def set_row(settings: ServiceSettings, model: Any, ident: uuid.UUID, **values: Any) -> None:
    with db.for_writing(db_sessions(settings)).begin() as session:
        session.execute(update(model).where(model.id == ident).values(**values))


def assert_consistent(settings: ServiceSettings) -> None:
    """No live row points to a missing file, and no checkpoint file lacks a live row."""
    store = store_dir(settings)
    with db_sessions(settings)() as session:
        rows = session.execute(
            select(Checkpoint.id, Checkpoint.status, Checkpoint.file_name, Checkpoint.deleting_at)
        ).all()
        marked = session.scalar(
            select(func.count()).select_from(Search).where(Search.deleting_at.is_not(None))
        )
    assert marked == 0
    live = {r.id for r in rows}
    for r in rows:
        assert r.deleting_at is None, r
        if r.status == JobStatus.SUCCEEDED or r.file_name:
            assert (store / f"{r.id}.tar").is_file(), r
    for p in store.iterdir():
        if p.suffix in (".tar", ".compact") or ".compact.tmp-" in p.name:
            assert uuid.UUID(p.name.lstrip(".").split(".")[0]) in live, p.name


def age_exports(settings: ServiceSettings, ids: list[uuid.UUID]) -> None:
    """Finish times one hour apart, oldest first."""
    start = db.utcnow() - timedelta(days=1)
    for i, ck in enumerate(ids):
        set_row(settings, Checkpoint, ck, finished_at=start + timedelta(hours=i))


# Two user keys and an admin key: what each key may see and delete (the `keyed` fixture).
KEYS = {"api_keys": "alice-key,bob-key", "admin_keys": "root-key"}


def as_key(key: str) -> dict[str, str]:
    return {"X-API-Key": key}
