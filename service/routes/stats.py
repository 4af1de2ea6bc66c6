"""The checkpoint store's numbers: its bytes, archives, searches and exports by status."""

from __future__ import annotations

from fastapi import APIRouter

from service.deps import HousekeepingDep, PrincipalDep
from service.schemas import StatsRead

router = APIRouter(tags=["stats"])


@router.get("/stats")
def read_stats(principal: PrincipalDep, housekeeping: HousekeepingDep) -> StatsRead:
    """Store bytes (as recorded, and on disk), archives, searches and checkpoints by status,
    and the retention settings: everyone's with an admin key (or an open API), else the
    caller's own. Rows being deleted are not counted."""
    return housekeeping.stats(principal)
