"""Registered models, liveness and readiness."""

from __future__ import annotations

import logging
from datetime import timedelta
from pathlib import Path

from fastapi import APIRouter, Response, status
from sqlalchemy import func, select, text
from sqlalchemy.exc import SQLAlchemyError

from optishear.core.settings import LibrarySettings
from optishear.model.sources import REGISTERED_MODELS, registered_model_dir
from service.db import utcnow
from service.deps import SessionDep, SettingsDep, StoreDep
from service.responses import API_ERRORS, RETRY_AFTER
from service.schemas import Health, ModelRead
from service.tables import RunnerRow

logger = logging.getLogger(__name__)
api = APIRouter(tags=["models"])
health = APIRouter(tags=["health"])


@api.get("/models")
def list_models() -> list[ModelRead]:
    """Models a search can name; any HF folder readable by the runners works too."""
    library = LibrarySettings()
    return [
        ModelRead(
            name=m.name,
            description=m.description,
            cached=(Path(registered_model_dir(m.name, library)) / "config.json").is_file(),
        )
        for m in REGISTERED_MODELS.values()
    ]


@health.get("/healthz")
def healthz() -> Health:
    """The process answers."""
    return Health(status="ok")


@health.get(
    "/readyz",
    responses={
        503: {
            "model": Health,
            "description": "not ready: see `checks`",
            "headers": API_ERRORS[503]["headers"],
        }
    },
)
def readyz(
    session: SessionDep, settings: SettingsDep, store: StoreDep, response: Response
) -> Health:
    """The database answers, at least one runner has sent a heartbeat recently, and the
    checkpoint store is a writable folder."""
    checks: dict[str, str] = {}
    problem = store.problem()
    if problem is not None:
        logger.error("checkpoint store: %s", problem)
    # The path stays in the server log: a probe need not learn the server's layout.
    checks["checkpoint_store"] = "ok" if problem is None else "not a writable folder"
    try:
        session.execute(text("SELECT 1"))
        checks["database"] = "ok"
        fresh = utcnow() - timedelta(seconds=max(3 * settings.heartbeat_seconds, 5.0))
        n = session.scalar(
            select(func.count()).select_from(RunnerRow).where(RunnerRow.heartbeat_at > fresh)
        )
        checks["runners"] = f"{n} alive" if n else "no runner heartbeat"
    except SQLAlchemyError as exc:
        checks["database"] = f"unreachable: {type(exc).__name__}"
    ok = (
        checks.get("database") == "ok"
        and not checks.get("runners", "").startswith("no")
        and problem is None
    )
    if not ok:
        response.status_code = status.HTTP_503_SERVICE_UNAVAILABLE
        response.headers.update(RETRY_AFTER)
    return Health(status="ok" if ok else "unavailable", checks=checks)
