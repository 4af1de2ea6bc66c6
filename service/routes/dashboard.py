"""The dashboard: one static page at `/` that reads only the public REST API."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, HTTPException, status
from fastapi.responses import FileResponse, RedirectResponse

STATIC = Path(__file__).resolve().parent.parent / "dashboard"
TYPES = {
    ".js": "text/javascript; charset=utf-8",  # ES modules need a JavaScript MIME type
    ".css": "text/css; charset=utf-8",
}
# The only files served, listed once at import: the path in the URL is looked up here, never
# joined onto a path. index.html is served at `/` only.
FILES = {
    path.relative_to(STATIC).as_posix(): TYPES[path.suffix]
    for path in sorted(STATIC.rglob("*"))
    if path.is_file() and path.suffix in TYPES
}
# Everything the page loads comes from this origin; API text is inserted as text, never markup.
HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' data: blob:; object-src 'none'; "
        "base-uri 'none'; frame-ancestors 'none'; form-action 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-cache",
}

router = APIRouter(include_in_schema=False)


@router.get("/")
def dashboard() -> FileResponse:
    """The single-page dashboard."""
    return FileResponse(
        STATIC / "index.html", media_type="text/html; charset=utf-8", headers=HEADERS
    )


@router.get("/dashboard")
def dashboard_redirect() -> RedirectResponse:
    return RedirectResponse("/")


@router.get("/dashboard/{name:path}")
def dashboard_file(name: str) -> FileResponse:
    """style.css and the page's modules (js/main.js, js/views/...)."""
    media_type = FILES.get(name)
    if media_type is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no dashboard file {name!r}")
    return FileResponse(STATIC / name, media_type=media_type, headers=HEADERS)
