"""Request dependencies: settings, a DB session per request, API-key auth.

Those that only read the app's state are async: FastAPI runs a sync dependency on a worker
thread, and under concurrent polls each such trip costs more than the work (the GIL's convoy).
Those that touch the database stay sync, on a worker thread, so that a slow database never
holds up the event loop."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from typing import Annotated, TypeVar

from fastapi import Depends, HTTPException, Request, Response, Security, status
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session, sessionmaker

from service.auth import UNAUTHORIZED, Principal
from service.housekeeping import Housekeeping, HousekeepingError
from service.settings import ServiceSettings
from service.status_cache import StatusCache
from service.store import CheckpointStore
from service.store_sweep import Removed


async def get_settings(request: Request) -> ServiceSettings:
    settings: ServiceSettings = request.app.state.settings
    return settings


async def get_store(request: Request) -> CheckpointStore:
    store: CheckpointStore = request.app.state.store
    return store


async def get_status_cache(request: Request) -> StatusCache:
    cache: StatusCache = request.app.state.status_cache
    return cache


async def get_housekeeping(request: Request) -> Housekeeping:
    """Deletes and the store's numbers (service.housekeeping): they run their own transactions."""
    return Housekeeping(
        request.app.state.sessions, request.app.state.store, request.app.state.settings
    )


async def get_sessions(request: Request) -> sessionmaker[Session]:
    """The session factory, for work that runs its own short transactions."""
    sessions: sessionmaker[Session] = request.app.state.sessions
    return sessions


def get_session(request: Request) -> Iterator[Session]:
    with request.app.state.sessions() as session:
        yield session


def get_write_session(request: Request) -> Iterator[Session]:
    """For routes that write: on SQLite their transactions take the write lock up front."""
    with request.app.state.write_sessions() as session:
        yield session


Row = TypeVar("Row")


def get_or_404(session: Session, model: type[Row], ident: uuid.UUID, what: str) -> Row:
    """The row with this primary key, or a 404 that names what was looked for."""
    row = session.get(model, ident)
    if row is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"{what} {ident} not found")
    return row


def deleted(
    delete: Callable[[uuid.UUID, Principal], Removed], ident: uuid.UUID, principal: Principal
) -> Response:
    """A DELETE route's answer: 204 once `delete` (a Housekeeping one) is done, else its
    refusal (404, 409) as the HTTP error."""
    try:
        delete(ident, principal)
    except HousekeepingError as exc:
        raise HTTPException(exc.status_code, str(exc)) from exc
    return Response(status_code=status.HTTP_204_NO_CONTENT)


SettingsDep = Annotated[ServiceSettings, Depends(get_settings)]
StoreDep = Annotated[CheckpointStore, Depends(get_store)]
HousekeepingDep = Annotated[Housekeeping, Depends(get_housekeeping)]
StatusCacheDep = Annotated[StatusCache, Depends(get_status_cache)]
SessionsDep = Annotated[sessionmaker[Session], Depends(get_sessions)]
SessionDep = Annotated[Session, Depends(get_session)]
WriteSessionDep = Annotated[Session, Depends(get_write_session)]

_api_key = APIKeyHeader(name="X-API-Key", auto_error=False, description="an API key")
_bearer = HTTPBearer(auto_error=False, description="an API key as a bearer token")


async def require_api_key(
    request: Request,
    header_key: Annotated[str | None, Security(_api_key)] = None,  # noqa: ARG001
    bearer: Annotated[HTTPAuthorizationCredentials | None, Security(_bearer)] = None,  # noqa: ARG001
) -> Principal:
    """The caller, as service.auth.ApiKeyAuth found it before the request was read (async: it
    reads the request's state only, so it costs no trip to a worker thread).

    The two parameters only document the schemes in OpenAPI: the middleware has checked the
    key already (401 before any parsing)."""
    principal: Principal | None = getattr(request.state, "principal", None)
    if principal is None:  # the middleware is not installed: refuse rather than open up
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED, UNAUTHORIZED, headers={"WWW-Authenticate": "Bearer"}
        )
    return principal


PrincipalDep = Annotated[Principal, Depends(require_api_key)]


def visible_or_404(principal: Principal, owner: str, what: str, ident: uuid.UUID) -> None:
    """Another key's search is answered as missing: its existence is not revealed."""
    if not principal.sees(owner):
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"{what} {ident} not found")
