"""Export progress: blocks pruned (and refit) of how many, the stage, and an ETA.

Four nullable columns on `checkpoints`, written by the runner while it exports (at most every
couple of seconds) and read by `GET /api/checkpoints/{id}` and the dashboard. Older rows have
none: their exports finished before anyone could watch them. Downgrade drops the columns.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-01 19:40:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("checkpoints", schema=None) as batch_op:
        batch_op.add_column(sa.Column("progress_done", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("progress_total", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("progress_stage", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("eta_s", sa.Float(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("checkpoints", schema=None) as batch_op:
        batch_op.drop_column("eta_s")
        batch_op.drop_column("progress_stage")
        batch_op.drop_column("progress_total")
        batch_op.drop_column("progress_done")
