"""Conditions on checkpoint rows that the store's upkeep shares: deletes and the sweep
(service.housekeeping), retention (service.retention), the store's numbers
(service.store_stats) and compact builds (service.compacts)."""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import ColumnElement, update
from sqlalchemy.orm import Session

from service.tables import Checkpoint, JobStatus, Search

ACTIVE = (JobStatus.QUEUED, JobStatus.RUNNING)


def live_checkpoint() -> ColumnElement[bool]:
    """A checkpoint no delete has started on, of a search no delete has started on."""
    return Checkpoint.deleting_at.is_(None) & Search.deleting_at.is_(None)


def update_succeeded(session: Session, checkpoint_id: uuid.UUID, **values: Any) -> bool:
    """Set `values` on this checkpoint if it is succeeded and no delete has started on it;
    whether it was. One conditional UPDATE: a delete that marked the row first wins."""
    return bool(
        session.execute(
            update(Checkpoint)
            .where(
                Checkpoint.id == checkpoint_id,
                Checkpoint.status == JobStatus.SUCCEEDED,
                Checkpoint.deleting_at.is_(None),
            )
            .values(**values)
            .execution_options(synchronize_session=False)
        ).rowcount
    )
