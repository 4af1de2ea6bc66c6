"""The runner's loop: liveness (heartbeats, leases), claiming jobs, and how a job ends."""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import uuid
from collections.abc import Callable
from typing import Any, TypeVar

from sqlalchemy import select, update
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from optishear.core.errors import OptiShearError
from optishear.core.settings import LibrarySettings
from service import db, queue
from service.db import utcnow
from service.housekeeping import Housekeeping
from service.runner import retry, staging
from service.runner.errors import CancelledError, LeaseLostError, StoppedError
from service.runner.export_job import run_export
from service.runner.measure_job import run_measurement
from service.runner.search_job import run_search_job
from service.settings import ServiceSettings
from service.store import CheckpointStore
from service.tables import FINISHED, Checkpoint, JobStatus, Measurement, RunnerRow, Search

logger = logging.getLogger(__name__)
T = TypeVar("T")


class QueueRunner:
    """Works the queue: checkpoint exports first (short, someone waits), then measurements of
    exported checkpoints, then searches."""

    def __init__(
        self,
        settings: ServiceSettings,
        sessions: sessionmaker[Session],
        *,
        library: LibrarySettings | None = None,
        runner_id: str | None = None,
        searches_until: uuid.UUID | None = None,
    ) -> None:
        self.settings = settings
        self.sessions = db.for_writing(sessions)  # a runner's transactions mostly write
        self.library = library or LibrarySettings()
        self.id = runner_id or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.stop = threading.Event()
        # `optishear run` works the queue for its own search: once that has ended, it claims
        # no other search (an orphan whose lease ran out would hold its user's export back)
        self.searches_until = searches_until
        self._job: tuple[type[Search | Checkpoint | Measurement], uuid.UUID] | None = None
        self.lost = threading.Event()  # set by the heartbeat when another runner took the job

    # -- liveness ---------------------------------------------------------------------------
    def register(self) -> None:
        with self.sessions.begin() as session:
            session.merge(
                RunnerRow(
                    id=self.id,
                    hostname=socket.gethostname(),
                    pid=os.getpid(),
                    started_at=utcnow(),
                    heartbeat_at=utcnow(),
                )
            )

    def heartbeat(self) -> None:
        job = self._job
        with self.sessions.begin() as session:
            session.execute(
                update(RunnerRow)
                .where(RunnerRow.id == self.id)
                .values(heartbeat_at=utcnow(), job=str(job[1]) if job else None)
            )
            if job and not queue.extend_lease(
                session, job[0], job[1], self.id, self.settings.lease_seconds
            ):
                logger.warning("lost the lease on %s %s", job[0].__tablename__, job[1])
                self.lost.set()

    def _heartbeat_loop(self) -> None:
        while not self.stop.wait(self.settings.heartbeat_seconds):
            try:
                self.heartbeat()
            except SQLAlchemyError as exc:  # the DB may be back at the next beat
                logger.warning("heartbeat failed: %s", exc)

    def run(self, *, until_idle: bool = False) -> None:
        """Claim and run jobs until `stop` is set (or, with until_idle, the queue is empty)."""
        self.register()
        staging.sweep(self)  # what runners killed mid-export left in the store
        # Deletes a crash left half done, archives no row owns, retention (service.housekeeping).
        Housekeeping(
            self.sessions, CheckpointStore.of(self.settings), self.settings
        ).sweep_quietly()
        beat = threading.Thread(target=self._heartbeat_loop, name="heartbeat", daemon=True)
        beat.start()
        logger.info("runner %s working the queue", self.id)
        try:
            while not self.stop.is_set():
                try:
                    worked = self.run_once()
                except SQLAlchemyError as exc:  # a DB outage must not kill the runner
                    logger.warning("queue unavailable: %s", exc)
                    worked = False
                if not worked:
                    if until_idle:
                        break
                    self.stop.wait(self.settings.poll_seconds)
        finally:
            self.stop.set()
            beat.join(timeout=5)
            with contextlib.suppress(SQLAlchemyError), self.sessions.begin() as session:
                session.execute(
                    update(RunnerRow)
                    .where(RunnerRow.id == self.id)
                    .values(heartbeat_at=utcnow(), job=None)
                )

    def run_once(self) -> bool:
        """Claim one job and run it; False when the queue had nothing to claim."""
        jobs = ((Checkpoint, run_export), (Measurement, run_measurement), (Search, run_search_job))
        for model, work in jobs:
            if model is Search and self._searches_over():
                continue
            job_id = queue.claim(
                self.sessions,
                model,
                self.id,
                lease_seconds=self.settings.lease_seconds,
                max_attempts=self.settings.max_attempts,
            )
            if job_id is not None:
                self._run_job(model, job_id, work)
                return True
        return False

    def _searches_over(self) -> bool:
        if self.searches_until is None:
            return False
        with self.sessions() as session:
            status = session.scalar(select(Search.status).where(Search.id == self.searches_until))
        return status is None or status in FINISHED

    def write(self, fn: Callable[[Session], T], what: str) -> T:
        """`fn(session)` in one transaction, retried through a DB outage (see retry.py)."""
        return retry.transaction(
            self.sessions, fn, seconds=self.settings.db_retry_seconds, what=what
        )

    def _run_job(self, model: Any, job_id: uuid.UUID, work: Any) -> None:
        self._job = (model, job_id)
        self.lost.clear()
        logger.info("runner %s claimed %s %s", self.id, model.__tablename__, job_id)
        try:
            self._work(model, job_id, work)
        except retry.DatabaseOutageError as exc:  # not marked failed: no write of ours can land
            logger.error(
                "%s %s abandoned (its lease expires, then another claim resumes it): %s",
                model.__tablename__,
                job_id,
                exc,
            )
        finally:
            self._job = None

    def _work(self, model: Any, job_id: uuid.UUID, work: Any) -> None:
        """Run the job and record how it ended."""
        try:
            work(self, job_id)
        except retry.DatabaseOutageError:
            raise
        except LeaseLostError:
            logger.warning("%s %s was taken over by another runner", model.__tablename__, job_id)
        except CancelledError:
            self._end(model, job_id, JobStatus.CANCELLED)
        except StoppedError:  # not a failure: the attempt is not counted
            logger.info("%s %s handed back to the queue", model.__tablename__, job_id)
            self._end(model, job_id, JobStatus.QUEUED, attempts=model.attempts - 1)
        except OptiShearError as exc:  # bad model, text or settings: another try cannot help
            logger.warning("%s %s failed: %s", model.__tablename__, job_id, exc)
            self._end(model, job_id, JobStatus.FAILED, error=str(exc))
        except Exception as exc:
            logger.exception("%s %s crashed", model.__tablename__, job_id)
            self._retry_or_fail(model, job_id, f"{type(exc).__name__}: {exc}")

    # A rerun of these after a lost commit reply is harmless: the lease is gone, finish is a no-op.
    def _end(self, model: Any, job_id: uuid.UUID, status: JobStatus, **kw: Any) -> None:
        self.write(
            lambda session: queue.finish(session, model, job_id, self.id, status, **kw),
            f"ending {model.__tablename__} {job_id}",
        )

    def _retry_or_fail(self, model: Any, job_id: uuid.UUID, error: str) -> None:
        def end(session: Session) -> None:
            attempts = session.scalar(select(model.attempts).where(model.id == job_id)) or 0
            if attempts >= self.settings.max_attempts:
                failed = f"failed after {attempts} attempts: {error}"
                queue.finish(session, model, job_id, self.id, JobStatus.FAILED, error=failed)
            else:  # back to the queue; the next claim resumes from the persisted state
                queue.finish(session, model, job_id, self.id, JobStatus.QUEUED, error=error)

        self.write(end, f"handing back {model.__tablename__} {job_id}")
