"""The durable job queue: atomic claims, leases extended by heartbeats, give-up after N attempts.

A job (a search, a checkpoint export or a measurement of one) is claimable when it is queued, or running with an
expired lease (its runner died). Postgres locks the chosen row with FOR UPDATE SKIP LOCKED so
that racing runners pick different jobs; on SQLite the transaction is BEGIN IMMEDIATE (see
service.db), which serialises claims. On both, the claim itself is a conditional UPDATE that
only succeeds while the row is still claimable, so two runners can never hold one job.
"""

from __future__ import annotations

import uuid
from datetime import timedelta

from sqlalchemy import and_, func, or_, select, update
from sqlalchemy.orm import Session, sessionmaker

from service.db import utcnow
from service.tables import Checkpoint, JobStatus, Measurement, Search

Job = type[Search] | type[Checkpoint] | type[Measurement]


def _claimable(model: Job, now: object) -> object:
    return or_(
        model.status == JobStatus.QUEUED,
        and_(model.status == JobStatus.RUNNING, model.lease_expires_at < now),
    )


def claim(
    sessions: sessionmaker[Session],
    model: Job,
    owner: str,
    *,
    lease_seconds: float,
    max_attempts: int,
) -> uuid.UUID | None:
    """Claim the oldest claimable job of `model` for `owner`; None when there is none."""
    while True:
        with sessions.begin() as session:
            now = utcnow()
            row = session.scalars(
                select(model)
                .where(_claimable(model, now))
                .order_by(model.created_at)
                .limit(1)
                .with_for_update(skip_locked=True)
            ).first()
            if row is None:
                return None
            if row.status == JobStatus.RUNNING and _give_up(row, max_attempts, now):
                continue  # that job is finished now; look for the next one
            claimed = session.execute(
                update(model)
                .where(model.id == row.id, _claimable(model, now))
                .values(
                    status=JobStatus.RUNNING,
                    lease_owner=owner,
                    lease_expires_at=now + timedelta(seconds=lease_seconds),
                    attempts=model.attempts + 1,
                    started_at=func.coalesce(model.started_at, now),
                )
                .execution_options(synchronize_session=False)
            )
            if claimed.rowcount != 1:  # taken in between (cannot happen under the row lock)
                return None
            return row.id


def _give_up(row: Search | Checkpoint | Measurement, max_attempts: int, now: object) -> bool:
    """A job whose runner vanished: end it when cancelled or out of attempts."""
    if isinstance(row, Search) and row.cancel_requested:
        row.status = JobStatus.CANCELLED
    elif row.attempts >= max_attempts:
        row.status = JobStatus.FAILED
        last = f" (last error: {row.error})" if row.error else ""
        row.error = (
            f"gave up after {row.attempts} attempts: the runner stopped renewing its lease{last}"
        )
    else:
        return False
    row.finished_at = now  # type: ignore[assignment]
    row.lease_owner = None
    row.lease_expires_at = None
    return True


def extend_lease(
    session: Session, model: Job, job_id: uuid.UUID, owner: str, lease_seconds: float
) -> bool:
    """Renew the lease; False when the job is no longer ours (expired and claimed by another)."""
    result = session.execute(
        update(model)
        .where(model.id == job_id, model.lease_owner == owner, model.status == JobStatus.RUNNING)
        .values(lease_expires_at=utcnow() + timedelta(seconds=lease_seconds))
        .execution_options(synchronize_session=False)
    )
    return result.rowcount == 1


def finish(
    session: Session,
    model: Job,
    job_id: uuid.UUID,
    owner: str,
    status: JobStatus,
    *,
    error: str | None = None,
    **values: object,
) -> bool:
    """End (or, with QUEUED, release) a job we hold; False when we lost it meanwhile."""
    done = status != JobStatus.QUEUED
    result = session.execute(
        update(model)
        .where(model.id == job_id, model.lease_owner == owner)
        .values(
            status=status,
            # A hand-back keeps the last error; success clears it.
            error=error if error is not None or status == JobStatus.SUCCEEDED else model.error,
            lease_owner=None,
            lease_expires_at=None,
            finished_at=utcnow() if done else None,
            **values,
        )
        .execution_options(synchronize_session=False)
    )
    return result.rowcount == 1
