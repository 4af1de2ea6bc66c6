"""Search activity: what a running search does between two generations.

One nullable JSON column on `searches` (service.schemas.Activity: what, done, total, best
error, elapsed and time left), written by the runner every few seconds during a screening
rung, a generation's batch, the as-shipped scoring and the held-out rows, and read by
`GET /api/searches/{id}` and the dashboard. Older rows have none. Downgrade drops it.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-07 02:10:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    json = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")
    with op.batch_alter_table("searches", schema=None) as batch_op:
        batch_op.add_column(sa.Column("activity", json, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("searches", schema=None) as batch_op:
        batch_op.drop_column("activity")
