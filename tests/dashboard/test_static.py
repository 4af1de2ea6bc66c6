"""The dashboard's files: served at `/` without a key, self-contained, nothing else readable."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.routes.dashboard import STATIC
from service.settings import ServiceSettings

SVG_NAMESPACE = "http://www.w3.org/2000/svg"  # an identifier in app.js, never fetched


@pytest.fixture
def client(tmp_path: Path) -> TestClient:
    settings = ServiceSettings(database_url=f"sqlite:///{tmp_path / 'db.sqlite'}", api_keys="a-key")
    return TestClient(create_app(settings))  # no lifespan: the page needs no database


def test_page_and_assets_are_served_without_a_key(client: TestClient) -> None:
    page = client.get("/")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    csp = page.headers["content-security-policy"]
    assert "default-src 'self'" in csp
    for name, kind in (("app.js", "text/javascript"), ("style.css", "text/css")):
        r = client.get(f"/dashboard/{name}")
        assert r.status_code == 200, name
        assert r.headers["content-type"].startswith(kind)
        assert r.content == (STATIC / name).read_bytes()
    assert client.get("/api/searches").status_code == 401  # the data still needs the key


@pytest.mark.parametrize(
    "url",
    [
        "/dashboard/index.html.bak",
        "/dashboard/..%2Froutes%2Fdashboard.py",
        "/dashboard/%2e%2e/app.py",
        "/dashboard/../settings.py",
    ],
)
def test_nothing_else_is_served(client: TestClient, url: str) -> None:
    r = client.get(url)
    assert r.status_code == 404, url
    assert b"import" not in r.content


def test_page_loads_nothing_from_elsewhere() -> None:
    """Offline: every src/href is local, and no file names another origin."""
    html = (STATIC / "index.html").read_text()
    refs = re.findall(r'(?:src|href)="([^"]*)"', html)
    assert refs
    assert all(ref.startswith(("/dashboard/", "#", "data:")) for ref in refs), refs
    for name in ("index.html", "app.js", "style.css"):
        text = (STATIC / name).read_text().replace(SVG_NAMESPACE, "")
        assert not re.search(r"https?://|//cdn|@import|\burl\(", text), name
    assert not re.search(r"^\s*import\b", (STATIC / "app.js").read_text(), flags=re.MULTILINE)
