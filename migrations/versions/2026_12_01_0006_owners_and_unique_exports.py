"""Owners and one export per candidate.

- `searches.owner`: the sha256 digest of the API key that made the search ('' in open mode,
  and for every search made before this revision: an admin key sees those).
- Idempotency keys are scoped per owner: the unique constraint moves from
  (idempotency_key) to (owner, idempotency_key). Expiry is the API's (a key older than the
  setting is released when reused), so no column is needed.
- At most one queued, running or succeeded checkpoint per candidate: a partial unique index.
  Duplicates made before it (concurrent requests could make several) are kept as rows but
  marked cancelled, the oldest succeeded (else the oldest) staying active.

Downgrade restores the global unique key (failing if two owners share one) and drops the
rest; the cancelled duplicates stay cancelled.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01 19:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ACTIVE = "status IN ('queued', 'running', 'succeeded')"


def upgrade() -> None:
    with op.batch_alter_table("searches", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("owner", sa.String(length=64), nullable=False, server_default="")
        )
        batch_op.drop_constraint("uq_searches_idempotency_key", type_="unique")
        batch_op.create_unique_constraint(
            "uq_searches_owner_idempotency_key", ["owner", "idempotency_key"]
        )
        batch_op.create_index("ix_searches_owner_created_at", ["owner", "created_at"])

    _cancel_duplicate_exports()
    op.create_index(
        "ux_checkpoints_active_candidate",
        "checkpoints",
        ["candidate_id"],
        unique=True,
        postgresql_where=sa.text(ACTIVE),
        sqlite_where=sa.text(ACTIVE),
    )


def _cancel_duplicate_exports() -> None:
    ckpt = sa.table(
        "checkpoints",
        sa.column("id", sa.Uuid()),
        sa.column("candidate_id", sa.Uuid()),
        sa.column("status", sa.String()),
        sa.column("created_at", sa.DateTime(timezone=True)),
        sa.column("error", sa.Text()),
    )
    conn = op.get_bind()
    rows = conn.execute(
        sa.select(ckpt.c.id, ckpt.c.candidate_id, ckpt.c.status)
        .where(ckpt.c.status.in_(["queued", "running", "succeeded"]))
        .order_by(ckpt.c.candidate_id, ckpt.c.created_at, ckpt.c.id)
    ).all()
    by_candidate: dict[object, list[tuple[object, str]]] = {}
    for ident, candidate, status in rows:
        by_candidate.setdefault(candidate, []).append((ident, status))
    for group in by_candidate.values():
        if len(group) < 2:
            continue
        keep = next((i for i, s in group if s == "succeeded"), group[0][0])
        for ident, _status in group:
            if ident != keep:
                conn.execute(
                    sa.update(ckpt)
                    .where(ckpt.c.id == ident)
                    .values(status="cancelled", error=f"a duplicate export of checkpoint {keep}")
                )


def downgrade() -> None:
    op.drop_index("ux_checkpoints_active_candidate", table_name="checkpoints")
    with op.batch_alter_table("searches", schema=None) as batch_op:
        batch_op.drop_index("ix_searches_owner_created_at")
        batch_op.drop_constraint("uq_searches_owner_idempotency_key", type_="unique")
        batch_op.create_unique_constraint("uq_searches_idempotency_key", ["idempotency_key"])
        batch_op.drop_column("owner")
