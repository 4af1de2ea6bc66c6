"""A runner's writes for the job it holds, retried through a database outage.

A short outage must not cost a search its attempt: the runner keeps the job and retries the
transaction (0.5 s doubling to 10 s) while the heartbeat re-extends the lease once the DB is
back. Only a lost or refused connection is retried; an integrity or programming error is a bug
and surfaces at once. Each `fn` must be safe to run again after a commit whose reply was lost.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from typing import TypeVar

from sqlalchemy import select
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from service.db import short_reason
from service.queue import Job
from service.tables import JobStatus

logger = logging.getLogger(__name__)

T = TypeVar("T")
FIRST_DELAY_SECONDS = 0.5
MAX_DELAY_SECONDS = 10.0


class DatabaseOutageError(Exception):
    """The database stayed unreachable past db_retry_seconds: the job is abandoned, not failed
    (its lease expires and the queue hands it on)."""


def is_connection_error(exc: BaseException) -> bool:
    if isinstance(exc, OperationalError | InterfaceError):
        return True
    return isinstance(exc, DBAPIError) and exc.connection_invalidated


def transaction(
    sessions: sessionmaker[Session],
    fn: Callable[[Session], T],
    *,
    seconds: float,
    what: str,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """`fn(session)` in one transaction, rerun after a connection failure for up to `seconds`;
    then DatabaseOutageError."""
    deadline = time.monotonic() + seconds
    delay = FIRST_DELAY_SECONDS
    while True:
        try:
            with sessions.begin() as session:
                return fn(session)
        except DBAPIError as exc:
            if not is_connection_error(exc):
                raise
            left = deadline - time.monotonic()
            if left <= 0:
                raise DatabaseOutageError(
                    f"{what}: the database stayed unreachable for {seconds:g} s "
                    f"({short_reason(exc)})"
                ) from exc
            pause = min(delay, left)
            logger.warning(
                "%s: database unreachable (%s); retrying in %.1f s", what, short_reason(exc), pause
            )
            sleep(pause)
            delay = min(delay * 2, MAX_DELAY_SECONDS)


def succeeded(session: Session, model: Job, job_id: uuid.UUID) -> bool:
    """A final write found the job no longer ours: did an earlier try's commit (its reply lost)
    or a runner that took over already finish it?"""
    return session.scalar(select(model.status).where(model.id == job_id)) == JobStatus.SUCCEEDED
