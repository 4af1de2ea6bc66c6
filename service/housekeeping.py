"""Keeping the checkpoint store tidy: deletes and the sweep, behind the `Housekeeping` facade
that also runs retention (service.retention), removes orphan files (service.store_sweep) and
reports what the store holds (service.store_stats).

One implementation for the API (DELETE routes, GET /api/stats), the runner (the sweep at start,
retention after each export) and `optishear store`. No torch here: the API imports it.

A delete is two-phase, so that no crash leaves a row pointing to a missing file, nor a file
without a row:

1. One transaction marks the rows (`deleting_at`): from its commit on, the API answers 404 for
   them and lists leave them out. Only finished jobs are marked (409 otherwise).
2. The files are unlinked (`<id>.tar`, `<id>.compact`), then the rows are deleted; a search's
   row takes its generations, candidates, checkpoints and genomes with it (ON DELETE CASCADE).

A process killed between the steps leaves marked rows, never unmarked files without rows; the
sweep (at API and runner start, `optishear store sweep`) finishes every marked row, removes
files that no live row owns, and applies retention.

Genomes: a search's stored genomes (GET /api/genomes, `metric_from`) go with it. A search made
with `metric_from` holds the expanded genomes in its own request, so it never needs the source's
rows again; and the library's entries are scoped by their search's owner, which they would lose.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Collection
from dataclasses import dataclass

from sqlalchemy import ColumnElement, delete, func, select, update
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from optishear.core.errors import OptiShearError
from service import db, store_stats, store_sweep
from service.auth import OPEN, Principal
from service.checkpoint_rows import ACTIVE
from service.db import utcnow
from service.retention import mark_for_retention
from service.schemas import StatsRead
from service.settings import ServiceSettings
from service.store import CheckpointStore
from service.store_stats import SearchEntry
from service.store_sweep import Removed
from service.tables import FINISHED, Checkpoint, JobStatus, Measurement, Search

logger = logging.getLogger(__name__)

MARKED = "marked"  # steps, as `step` hears of them (tests stop the process there)
FILES_REMOVED = "files removed"


class HousekeepingError(OptiShearError):
    """A delete that cannot be done; `status_code` for the API."""

    status_code = 409


class NotFoundError(HousekeepingError):
    status_code = 404


class BusyError(HousekeepingError):
    """The job (or one of its exports) is queued or running."""

    status_code = 409


@dataclass(frozen=True)
class SweepReport:
    finished: Removed  # deletes a crash had left half done
    orphans: Removed  # files without a live row
    retention: Removed
    lost: int  # succeeded checkpoints whose archive had gone (now failed, as reads show them)


def _no_step(_name: str) -> None:
    return None


class Housekeeping:
    """Deletes, retention, the sweep and the store's numbers, on one database and store.

    `sessions` may be read or write sessions (service.db.make_sessions); writes always go
    through the write flavour. `step(name)` is called after each committed step of a delete
    (MARKED, FILES_REMOVED): the fault tests stop the process there."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        store: CheckpointStore,
        settings: ServiceSettings,
        *,
        step: Callable[[str], None] = _no_step,
    ) -> None:
        self.reads = sessions
        self.writes = db.for_writing(sessions)
        self.store = store
        self.settings = settings
        self.step = step

    # -- deletes ----------------------------------------------------------------------------
    def delete_search(self, search_id: uuid.UUID, principal: Principal = OPEN) -> Removed:
        """Delete a finished search with its exports and their files (404, 409 otherwise)."""
        with self.writes.begin() as session:
            # Locked: an export requested at the same moment waits for this (routes/searches).
            search = session.get(Search, search_id, with_for_update=True)
            if search is None or search.deleting_at is not None or not principal.sees(search.owner):
                raise NotFoundError(f"search {search_id} not found")
            if search.status not in FINISHED:
                raise BusyError(_busy_search(search))
            active = session.scalars(
                select(Checkpoint.id)
                .where(
                    Checkpoint.search_id == search_id,
                    Checkpoint.status.in_(ACTIVE),
                    Checkpoint.deleting_at.is_(None),
                )
                .limit(1)
            ).first()
            if active is not None:
                raise BusyError(
                    f"search {search_id} has an export in progress (checkpoint {active}): wait "
                    "for the export to finish, then delete the search"
                )
            now = utcnow()
            search.deleting_at = now
            session.execute(
                update(Checkpoint)
                .where(Checkpoint.search_id == search_id, Checkpoint.deleting_at.is_(None))
                .values(deleting_at=now)
                .execution_options(synchronize_session=False)
            )
            # After the update: it waited for any measurement request holding a checkpoint.
            measuring = _measuring(session, Checkpoint.search_id == search_id)
            if measuring is not None:
                raise BusyError(
                    f"search {search_id} has a measurement in progress (checkpoint "
                    f"{measuring}): wait for it to finish, then delete the search"
                )
        self.step(MARKED)
        removed = self._finish_search(search_id)
        logger.info(
            "deleted search %s: %d checkpoints, %d files, %d bytes",
            search_id,
            removed.checkpoints,
            removed.files,
            removed.bytes,
        )
        return removed

    def delete_checkpoint(self, checkpoint_id: uuid.UUID, principal: Principal = OPEN) -> Removed:
        """Delete a finished export and its files (404, 409 otherwise); its search stays."""
        with self.writes.begin() as session:
            ckpt = session.get(Checkpoint, checkpoint_id, with_for_update=True)
            owner = None
            if ckpt is not None and ckpt.deleting_at is None:
                owner = session.execute(
                    select(Search.owner).where(
                        Search.id == ckpt.search_id, Search.deleting_at.is_(None)
                    )
                ).scalar_one_or_none()
            if ckpt is None or owner is None or not principal.sees(owner):
                raise NotFoundError(f"checkpoint {checkpoint_id} not found")
            if ckpt.status in ACTIVE:
                raise BusyError(
                    f"checkpoint {checkpoint_id} is {ckpt.status}: wait for the export to "
                    "finish, then delete it"
                )
            if _measuring(session, Checkpoint.id == checkpoint_id) is not None:
                raise BusyError(
                    f"checkpoint {checkpoint_id} is being measured: wait for the measurement "
                    "to finish, then delete it"
                )
            ckpt.deleting_at = utcnow()
        self.step(MARKED)
        removed = self._finish_checkpoint(checkpoint_id)
        logger.info(
            "deleted checkpoint %s: %d files, %d bytes", checkpoint_id, removed.files, removed.bytes
        )
        return removed

    def _finish_search(self, search_id: uuid.UUID) -> Removed:
        """Phase 2 of a marked search: its checkpoints' files, then its rows."""
        with self.writes.begin() as session:
            if session.scalar(select(Search.deleting_at).where(Search.id == search_id)) is None:
                return Removed()  # finished by someone else, or never marked
            # Phase 1 refused active exports, and an export request locks the search row; an
            # export that still got in (none should) is cancelled, or waited for if it runs.
            exports = Checkpoint.search_id == search_id
            settled = _settle(session, Checkpoint, exports, "its search is being deleted")
            if not (settled and _settle_measurements(session, exports)):
                logger.warning(
                    "search %s: an export or measurement is running; the next sweep finishes "
                    "the delete",
                    search_id,
                )
                return Removed()
            session.execute(
                update(Checkpoint)
                .where(Checkpoint.search_id == search_id, Checkpoint.deleting_at.is_(None))
                .values(deleting_at=utcnow())
                .execution_options(synchronize_session=False)
            )
            ids = list(
                session.scalars(select(Checkpoint.id).where(Checkpoint.search_id == search_id))
            )
        files = size = 0
        for checkpoint_id in ids:
            n, b = self.store.remove(checkpoint_id)
            files, size = files + n, size + b
        gone = self._delete_marked(Search, search_id)
        return Removed(searches=gone, checkpoints=len(ids) if gone else 0, files=files, bytes=size)

    def _finish_checkpoint(self, checkpoint_id: uuid.UUID) -> Removed:
        """Phase 2 of a marked checkpoint: its files, then its row."""
        with self.writes.begin() as session:
            marked = session.scalar(
                select(Checkpoint.deleting_at).where(Checkpoint.id == checkpoint_id)
            )
            if marked is None:
                return Removed()
            if not _settle_measurements(session, Checkpoint.id == checkpoint_id):
                logger.warning(
                    "checkpoint %s: a measurement is running; the next sweep finishes the delete",
                    checkpoint_id,
                )
                return Removed()
        files, size = self.store.remove(checkpoint_id)
        gone = self._delete_marked(Checkpoint, checkpoint_id)
        return Removed(checkpoints=gone, files=files, bytes=size)

    def _delete_marked(self, table: type[Search | Checkpoint], ident: uuid.UUID) -> int:
        """Phase 2's last step, once the files are gone: the row, if it is still marked."""
        self.step(FILES_REMOVED)
        with self.writes.begin() as session:
            return session.execute(
                delete(table)
                .where(table.id == ident, table.deleting_at.is_not(None))
                .execution_options(synchronize_session=False)
            ).rowcount

    def finish_marked(self) -> Removed:
        """Finish every delete a crash (or a running export) left half done."""
        with self.reads() as session:
            searches = list(
                session.scalars(select(Search.id).where(Search.deleting_at.is_not(None)))
            )
            checkpoints = list(
                session.scalars(
                    select(Checkpoint.id)
                    .join(Search, Search.id == Checkpoint.search_id)
                    .where(Checkpoint.deleting_at.is_not(None), Search.deleting_at.is_(None))
                )
            )
        removed = Removed()
        for search_id in searches:
            removed += self._finish_search(search_id)
        for checkpoint_id in checkpoints:
            removed += self._finish_checkpoint(checkpoint_id)
        if searches or checkpoints:
            logger.info(
                "finished %d interrupted deletes: %d searches, %d checkpoints, %d bytes",
                len(searches) + len(checkpoints),
                removed.searches,
                removed.checkpoints,
                removed.bytes,
            )
        return removed

    # -- the sweep --------------------------------------------------------------------------
    def remove_orphans(self) -> Removed:
        """Remove the store's files that no live row owns (service.store_sweep)."""
        return store_sweep.remove_orphans(self.reads, self.writes, self.store)

    def forget_lost_archives(self) -> int:
        """Succeeded checkpoints whose archive has gone become failed (service.store_sweep)."""
        return store_sweep.forget_lost_archives(self.reads, self.writes, self.store)

    def sweep(self) -> SweepReport:
        """Finish interrupted deletes, remove orphan files, mark lost archives, apply retention."""
        finished = self.finish_marked()
        orphans = self.remove_orphans()
        lost = self.forget_lost_archives()
        retention = self.apply_retention()
        return SweepReport(finished=finished, orphans=orphans, retention=retention, lost=lost)

    def sweep_quietly(self) -> SweepReport | None:
        """The sweep at start-up: a database or store problem is logged, never raised."""
        try:
            return self.sweep()
        except (SQLAlchemyError, OSError) as exc:
            logger.warning("checkpoint store sweep skipped: %s", exc)
            return None

    # -- retention (service.retention) -------------------------------------------------------
    def apply_retention(self, *, protect: Collection[uuid.UUID] = ()) -> Removed:
        """OPTISHEAR_KEEP_CHECKPOINTS and OPTISHEAR_STORE_MAX_BYTES: the oldest succeeded
        checkpoints beyond either limit are deleted (two-phase). The newest one, and those in
        `protect` (the export just made), always stay. A download already in progress still
        completes: an open file outlives its unlink."""
        marked = mark_for_retention(self.reads, self.writes, self.settings, protect=protect)
        if not marked:
            return Removed()
        self.step(MARKED)
        removed = Removed()
        for checkpoint_id, why in marked:
            done = self._finish_checkpoint(checkpoint_id)
            removed += done
            logger.info(
                "retention deleted checkpoint %s (%d bytes): %s", checkpoint_id, done.bytes, why
            )
        return removed

    def after_export(self, checkpoint_id: uuid.UUID) -> Removed | None:
        """The runner, after each export: deletes it held up (a search's delete waits for its
        exports), then retention, which never takes this export. A failure is logged: the
        export itself has succeeded."""
        try:
            return self.finish_marked() + self.apply_retention(protect={checkpoint_id})
        except (SQLAlchemyError, OSError) as exc:
            logger.warning("retention skipped: %s", exc)
            return None

    # -- what the store holds (service.store_stats) -----------------------------------------
    def stats(self, principal: Principal = OPEN) -> StatsRead:
        """GET /api/stats: everyone's numbers for an admin (or the open API), else the caller's."""
        return store_stats.stats(self.reads, self.store, self.settings, principal)

    def inventory(self) -> list[SearchEntry]:
        """`optishear store list`: every search with its checkpoints and their bytes on disk."""
        return store_stats.inventory(self.reads, self.store)


def _measuring(session: Session, checkpoints: ColumnElement[bool]) -> uuid.UUID | None:
    """A checkpoint (of those selected) with a queued or running measurement, if any."""
    return session.scalars(
        select(Measurement.checkpoint_id)
        .join(Checkpoint, Checkpoint.id == Measurement.checkpoint_id)
        .where(checkpoints, Measurement.status.in_(ACTIVE))
        .limit(1)
    ).first()


def _settle_measurements(session: Session, checkpoints: ColumnElement[bool]) -> bool:
    """Phase 2's guard: queued measurements of these (marked) checkpoints are cancelled; False
    while one runs (it reads the tar). Phase 1 refused both; this covers a request that got in
    after it."""
    ids = select(Checkpoint.id).where(checkpoints).scalar_subquery()
    measures = Measurement.checkpoint_id.in_(ids)
    return _settle(session, Measurement, measures, "its checkpoint is being deleted")


def _settle(
    session: Session,
    job: type[Checkpoint | Measurement],
    where: ColumnElement[bool],
    why: str,
) -> bool:
    """The queued jobs (of those selected) are cancelled, with why; False while one runs."""
    session.execute(
        update(job)
        .where(where, job.status == JobStatus.QUEUED)
        .values(status=JobStatus.CANCELLED, finished_at=utcnow(), error=why)
        .execution_options(synchronize_session=False)
    )
    running = session.scalar(
        select(func.count()).select_from(job).where(where, job.status == JobStatus.RUNNING)
    )
    return not running


def _busy_search(search: Search) -> str:
    cancel = f"POST /api/searches/{search.id}/cancel"
    if search.status == JobStatus.QUEUED:
        return f"search {search.id} is queued: cancel it first ({cancel}), then delete it"
    if search.cancel_requested:
        return f"search {search.id} is stopping after a cancel: delete it once it has stopped"
    return (
        f"search {search.id} is running: cancel it first ({cancel}) and delete it once it "
        "has stopped"
    )
