"""Search genomes: each succeeded search's best distinct genomes, for later searches to reuse.

A new table, written by the runner in the transaction that marks a search succeeded. Searches
that succeeded before this revision get no rows (their families were never recorded):
`metric_from` answers 409 for them. Downgrading drops the table.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01 15:45:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "search_genomes",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("search_id", sa.Uuid(), nullable=False),
        sa.Column("rank", sa.Integer(), nullable=False),
        sa.Column("origin", sa.String(length=16), nullable=False),
        sa.Column("genome_index", sa.Integer(), nullable=False),
        sa.Column("spec", sa.String(length=256), nullable=False),
        sa.Column("formula", sa.String(length=1024), nullable=False),
        sa.Column("error", sa.Float(), nullable=False),
        sa.Column("family", sa.String(length=64), nullable=False),
        sa.Column("pattern", sa.String(length=32), nullable=False),
        sa.Column("target", sa.Float(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["search_id"],
            ["searches.id"],
            name=op.f("fk_search_genomes_search_id_searches"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_search_genomes")),
        sa.UniqueConstraint("search_id", "rank", name=op.f("uq_search_genomes_search_id")),
    )
    with op.batch_alter_table("search_genomes", schema=None) as batch_op:
        batch_op.create_index(
            "ix_search_genomes_family_pattern", ["family", "pattern"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("search_genomes", schema=None) as batch_op:
        batch_op.drop_index("ix_search_genomes_family_pattern")
    op.drop_table("search_genomes")
