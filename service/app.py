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
from starlette.routing import compile_path

from optishear.core.errors import OptiShearError
from service import db
from service.auth import ApiKeyAuth
from service.deps import require_api_key
from service.housekeeping import Housekeeping
from service.middleware import BodyLimit
from service.responses import API_ERRORS, RETRY_AFTER, install_openapi
from service.routes import checkpoints, dashboard, genomes, health, measurements, searches, stats
from service.schemas import validation_message
from service.settings import ServiceSettings, get_settings
from service.status_cache import StatusCache
from service.store import CheckpointStore

logger = logging.getLogger(__name__)


def _allowed_methods(app: FastAPI, path: str) -> list[str]:
    """The methods the OpenAPI document gives this path (FastAPI's included routers hide
    their routes from app.routes, and the document is the contract anyway)."""
    methods: set[str] = set()
    for template, item in app.openapi()["paths"].items():
        regex, _, _ = compile_path(template)
        if regex.match(path):
            methods |= {m.upper() for m in item}
    return sorted(methods)


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
        if (problem := app.state.store.problem()) is not None:
            logger.error("checkpoint store: %s: exports and downloads answer 503", problem)
        else:  # deletes a crash left half done, files no row owns, retention
            Housekeeping(app.state.sessions, app.state.store, settings).sweep_quietly()
        if not settings.api_keys and not settings.admin_keys:
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
    app.state.store = CheckpointStore.of(settings)
    app.state.status_cache = StatusCache(settings.status_cache_seconds)

    api = APIRouter(prefix="/api", dependencies=[Depends(require_api_key)], responses=API_ERRORS)
    api.include_router(searches.router)
    api.include_router(checkpoints.router)
    api.include_router(measurements.router)
    api.include_router(genomes.router)
    api.include_router(health.api)
    api.include_router(stats.router)
    app.include_router(api)
    app.include_router(health.health)
    app.include_router(dashboard.router)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        headers = dict(exc.headers or {})
        if exc.status_code == status.HTTP_405_METHOD_NOT_ALLOWED:
            # Starlette names the methods of the one route it matched; a path served by
            # several routes (GET and POST of .../checkpoints) allows all of theirs.
            headers["Allow"] = ", ".join(_allowed_methods(app, request.url.path))
        return JSONResponse(
            {"detail": str(exc.detail)}, status_code=exc.status_code, headers=headers
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
            headers=RETRY_AFTER,
        )

    @app.exception_handler(Exception)
    async def crash(_request: Request, exc: Exception) -> JSONResponse:
        logger.error("unhandled error", exc_info=exc)
        return JSONResponse(
            {"detail": "internal error; the server log has the details"},
            status_code=status.HTTP_500_INTERNAL_SERVER_ERROR,
        )

    install_openapi(app, secured=bool(settings.api_keys or settings.admin_keys))
    # No route ever reads an oversized body; and before that, a caller without a valid key
    # gets 401 before anything reads or parses the request (the last added runs first).
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)  # type: ignore[arg-type]
    app.add_middleware(ApiKeyAuth, settings=settings)  # type: ignore[arg-type]
    return app
