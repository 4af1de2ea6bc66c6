"""Store housekeeping: two-phase deletes and the compact download's archive.

- `searches.deleting_at`, `checkpoints.deleting_at`: set in the transaction that starts a
  delete (phase 1); from then on the API answers 404 for the row and lists never show it, and
  whoever finishes the delete (the request itself, or a later sweep after a crash) removes the
  files, then the rows (service.housekeeping). NULL on every existing row.
- `checkpoints.compact_bytes`, `checkpoints.compact_sha256`: the compact archive
  (`<id>.compact`, built on the first `?format=compact` download), once it is in the store.
- The one-live-export-per-candidate index no longer counts a checkpoint being deleted, so the
  candidate can be exported again at once.

Downgrade drops the columns and restores 0006's index. It refuses while a row is still marked
deleting (it would reappear, its files perhaps gone): `optishear store sweep` finishes them.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-02 10:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

INDEX = "ux_checkpoints_active_candidate"
ACTIVE_0006 = "status IN ('queued', 'running', 'succeeded')"
ACTIVE = f"{ACTIVE_0006} AND deleting_at IS NULL"


def _active_index(where: str) -> None:
    op.create_index(
        INDEX,
        "checkpoints",
        ["candidate_id"],
        unique=True,
        postgresql_where=sa.text(where),
        sqlite_where=sa.text(where),
    )


def upgrade() -> None:
    with op.batch_alter_table("searches", schema=None) as batch_op:
        batch_op.add_column(sa.Column("deleting_at", sa.DateTime(timezone=True), nullable=True))
    op.drop_index(INDEX, table_name="checkpoints")
    with op.batch_alter_table("checkpoints", schema=None) as batch_op:
        batch_op.add_column(sa.Column("deleting_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("compact_bytes", sa.BigInteger(), nullable=True))
        batch_op.add_column(sa.Column("compact_sha256", sa.String(length=64), nullable=True))
    _active_index(ACTIVE)


def downgrade() -> None:
    conn = op.get_bind()
    marked = sum(
        conn.execute(
            sa.text(f"SELECT count(*) FROM {t} WHERE deleting_at IS NOT NULL")
        ).scalar_one()
        for t in ("searches", "checkpoints")
    )
    if marked:
        raise RuntimeError(
            f"{marked} searches or checkpoints are still being deleted: run "
            "`optishear store sweep` to finish them, then downgrade"
        )
    op.drop_index(INDEX, table_name="checkpoints")
    with op.batch_alter_table("checkpoints", schema=None) as batch_op:
        batch_op.drop_column("compact_sha256")
        batch_op.drop_column("compact_bytes")
        batch_op.drop_column("deleting_at")
    _active_index(ACTIVE_0006)
    with op.batch_alter_table("searches", schema=None) as batch_op:
        batch_op.drop_column("deleting_at")
