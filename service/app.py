"""The FastAPI application: routers, auth, body limit and JSON errors (never a traceback)."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import APIRouter, Depends, FastAPI, Request, status
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import OperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException

from optishear.errors import OptiShearError
from service import db
from service.deps import require_api_key
from service.middleware import BodyLimit
from service.routes import checkpoints, dashboard, genomes, health, searches
from service.schemas import validation_message
from service.settings import ServiceSettings, get_settings

logger = logging.getLogger(__name__)


def create_app(settings: ServiceSettings | None = None, *, migrate: bool = True) -> FastAPI:
    """Build the app; the engine is made (and migrations run) when it starts, not at import."""
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        url = settings.resolved_database_url()
        if migrate:
            db.upgrade(url)
        engine = db.make_engine(url)
        app.state.sessions = db.make_sessions(engine)
        app.state.write_sessions = db.make_sessions(engine, write=True)
        if not settings.api_keys:
            logger.warning(
                "OPTISHEAR_API_KEYS is not set: the API is open to anyone who can reach it"
            )
        yield
        engine.dispose()

    app = FastAPI(
        title="OptiShear",
        version="0.1.0",
        description="Queue pruning searches, follow their Pareto fronts, download checkpoints.",
        lifespan=lifespan,
    )
    app.state.settings = settings

    api = APIRouter(prefix="/api", dependencies=[Depends(require_api_key)])
    api.include_router(searches.router)
    api.include_router(checkpoints.router)
    api.include_router(genomes.router)
    api.include_router(health.api)
    app.include_router(api)
    app.include_router(health.health)
    app.include_router(dashboard.router)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse(
            {"detail": str(exc.detail)}, status_code=exc.status_code, headers=exc.headers
        )

    @app.exception_handler(RequestValidationError)
    async def invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [
            {"loc": list(e.get("loc", ())), "msg": str(e.get("msg", "")), "type": e.get("type")}
            for e in exc.errors()
        ]
        return JSONResponse(
            {"detail": validation_message(exc.errors()), "errors": errors},
            status_code=status.HTTP_422_UNPROCESSABLE_CONTENT,
        )

    @app.exception_handler(OptiShearError)
    async def domain_error(_request: Request, exc: OptiShearError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=status.HTTP_422_UNPROCESSABLE_CONTENT)

    @app.exception_handler(OperationalError)
    async def db_down(_request: Request, exc: OperationalError) -> JSONResponse:
        logger.error("database error: %s", exc.orig)
        return JSONResponse(
            {"detail": "the database is unavailable; retry later"},
            status_code=status.HTTP_503_SERVICE_UNAVAILABLE,
        )

    @app.exception_handler(Exception)
    async def crash(_request: Request, exc: Exception) -> JSONResponse:
        logger.error("unhandled error", exc_info=exc)
        return JSONResponse(
            {"detail": "internal error; the server log has the details"},
            status_code=status.HTTP_500_INTERNAL_SERVER_ERROR,
        )

    # Outermost, so that no route ever reads an oversized body.
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)  # type: ignore[arg-type]
    return app
