"""Who is calling: API keys checked before anything reads the request, and what a key may see.

Keys are kept as sha256 digests and compared in constant time. A search belongs to the key
that made it (`Search.owner` is the key's digest); an admin key sees every search. With no
keys configured the API is open: every caller is the same anonymous admin, owner ''.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass

from starlette.types import ASGIApp, Receive, Scope, Send

from service.middleware import send_json_error
from service.settings import ServiceSettings, hash_key

OPEN_OWNER = ""
UNAUTHORIZED = "a valid API key is required (X-API-Key header or Authorization: Bearer)"


@dataclass(frozen=True)
class Principal:
    owner: str  # the key's digest; '' in open mode
    admin: bool

    def sees(self, owner: str) -> bool:
        return self.admin or hmac.compare_digest(owner, self.owner)


OPEN = Principal(owner=OPEN_OWNER, admin=True)


def _given_key(headers: dict[bytes, bytes]) -> str | None:
    if key := headers.get(b"x-api-key"):
        return key.decode("latin-1")
    scheme, _, token = headers.get(b"authorization", b"").decode("latin-1").partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None


def _matches(digest: str, stored: tuple[str, ...]) -> bool:
    # Every stored digest is compared, without stopping early.
    matches = [hmac.compare_digest(digest, s) for s in stored]
    return any(matches)


def principal_for(settings: ServiceSettings, headers: dict[bytes, bytes]) -> Principal | None:
    """The caller, or None when keys are configured and none of them was given."""
    if not settings.api_keys and not settings.admin_keys:
        return OPEN
    given = _given_key(headers)
    if not given:
        return None
    digest = hash_key(given)
    if _matches(digest, settings.admin_keys):
        return Principal(owner=digest, admin=True)
    if _matches(digest, settings.api_keys):
        return Principal(owner=digest, admin=False)
    return None


class ApiKeyAuth:
    """Answers 401 for /api calls without a valid key before the body is read or parsed, so a
    caller without a key learns nothing from validation (and costs no parsing)."""

    def __init__(self, app: ASGIApp, settings: ServiceSettings, prefix: str = "/api") -> None:
        self.app = app
        self.settings = settings
        self.prefix = prefix

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not _under(scope["path"], self.prefix):
            await self.app(scope, receive, send)
            return
        principal = principal_for(self.settings, dict(scope["headers"]))
        if principal is None:
            await send_json_error(send, 401, UNAUTHORIZED, ((b"www-authenticate", b"Bearer"),))
            return
        scope.setdefault("state", {})["principal"] = principal
        await self.app(scope, receive, send)


def _under(path: str, prefix: str) -> bool:
    return path == prefix or path.startswith(prefix + "/")
