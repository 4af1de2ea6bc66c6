"""Request dependencies: settings, a DB session per request, API-key auth."""

from __future__ import annotations

import hmac
import uuid
from collections.abc import Iterator
from typing import Annotated, TypeVar

from fastapi import Depends, HTTPException, Request, Security, status
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session

from service.settings import ServiceSettings, hash_key


def get_settings(request: Request) -> ServiceSettings:
    settings: ServiceSettings = request.app.state.settings
    return settings


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


SettingsDep = Annotated[ServiceSettings, Depends(get_settings)]
SessionDep = Annotated[Session, Depends(get_session)]
WriteSessionDep = Annotated[Session, Depends(get_write_session)]

_api_key = APIKeyHeader(name="X-API-Key", auto_error=False, description="an API key")
_bearer = HTTPBearer(auto_error=False, description="an API key as a bearer token")


def require_api_key(
    settings: SettingsDep,
    header_key: Annotated[str | None, Security(_api_key)] = None,
    bearer: Annotated[HTTPAuthorizationCredentials | None, Security(_bearer)] = None,
) -> None:
    """With keys configured, every /api call needs one (X-API-Key or Authorization: Bearer)."""
    if not settings.api_keys:
        return
    given = header_key or (bearer.credentials if bearer else None)
    if given:
        digest = hash_key(given)
        # Compare against every stored digest, in constant time, without stopping early.
        matches = [hmac.compare_digest(digest, stored) for stored in settings.api_keys]
        if any(matches):
            return
    raise HTTPException(
        status.HTTP_401_UNAUTHORIZED,
        "a valid API key is required (X-API-Key header or Authorization: Bearer)",
        headers={"WWW-Authenticate": "Bearer"},
    )
