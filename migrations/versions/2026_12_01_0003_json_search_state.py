"""Search states are versioned JSON now; unfinished searches saved as pickles are failed.

A pickled state could only be loaded by running the code it names, which OptiShear no longer
does. Queued or running searches that hold one are marked failed with a message saying so;
their stored generations, fronts and checkpoints stay. Finished searches keep their state
column as it was (nothing reads it again). Downgrading changes no rows.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01 10:00:00.000000
"""

from collections.abc import Sequence
from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

MESSAGE = (
    "this search was saved in the old pickle state format, which OptiShear no longer loads "
    "(loading it could run code); its generations and fronts are kept: submit it again to "
    "search anew"
)


def upgrade() -> None:
    searches = sa.table(
        "searches",
        sa.column("id", sa.Uuid),
        sa.column("status", sa.String),
        sa.column("state", sa.LargeBinary),
        sa.column("error", sa.Text),
        sa.column("finished_at", sa.DateTime(timezone=True)),
        sa.column("lease_owner", sa.String),
        sa.column("lease_expires_at", sa.DateTime(timezone=True)),
    )
    conn = op.get_bind()
    now = datetime.now(UTC)
    if conn.dialect.name == "sqlite":  # as service.db.UTCDateTime stores it there
        now = now.replace(tzinfo=None)
    rows = conn.execute(
        sa.select(searches.c.id, searches.c.state).where(
            searches.c.status.in_(("queued", "running")), searches.c.state.is_not(None)
        )
    ).all()
    pickled = [row.id for row in rows if bytes(row.state)[:1] == b"\x80"]
    if pickled:
        conn.execute(
            sa.update(searches)
            .where(searches.c.id.in_(pickled))
            .values(
                status="failed",
                error=MESSAGE,
                finished_at=now,
                lease_owner=None,
                lease_expires_at=None,
            )
        )


def downgrade() -> None:
    pass  # the failed searches stay failed: their pickled states are not trusted either way
