"""Stored requests say how they ran: no validation sequences, no baselines scored as shipped.

Searches from before validation sequences and fallback baselines existed scored candidates on
their calibration sequences and recommended a searched candidate only. Their stored requests
gain `calibration.validation_share = 0` and `fallback_baselines = false`, so that the API shows
how each ran, and a queued or interrupted one resumes (or starts) as it began: its saved state
still matches its request (optishear.search.state reads a state saved without these settings
as having them at those values). Requests that name them already are left as they are.
Downgrading leaves the rows alone: older code ignores the extra keys.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-06 23:30:00.000000
"""

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _json() -> sa.types.TypeEngine:
    return sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")


def _as_it_ran(request: dict[str, Any]) -> dict[str, Any] | None:
    """The request with the settings it ran under, or None when it names them already."""
    calibration = dict(request.get("calibration") or {})
    if "validation_share" in calibration and "fallback_baselines" in request:
        return None
    calibration.setdefault("validation_share", 0.0)
    return {**request, "calibration": calibration, "fallback_baselines": False}


def upgrade() -> None:
    searches = sa.table("searches", sa.column("id", sa.Uuid), sa.column("request", _json()))
    conn = op.get_bind()
    for row in conn.execute(sa.select(searches.c.id, searches.c.request)).all():
        updated = _as_it_ran(dict(row.request))
        if updated is not None:
            conn.execute(sa.update(searches).where(searches.c.id == row.id).values(request=updated))


def downgrade() -> None:
    pass  # the keys stay: older code ignores them
