"""The dashboard's files: served at `/` without a key, self-contained, nothing else readable.

The page is ES modules (service/dashboard/js/): index.html loads js/main.js, which imports the
rest by relative paths; every module must be served as JavaScript or the browser refuses it.
"""

from __future__ import annotations

import posixpath
import re
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.routes.dashboard import STATIC
from service.settings import ServiceSettings

SVG_NAMESPACE = "http://www.w3.org/2000/svg"  # an identifier in dom.js, never fetched
ENTRY = "js/main.js"
# `import ... from "x"`, `export ... from "x"`, `import "x"` and `import("x")`.
IMPORT = re.compile(r"""(?:\bfrom\s*|\bimport\s*\(?\s*)["']([^"']+)["']""")
MAX_LINES = 400  # a module you can read in one sitting


@pytest.fixture
def client(tmp_path: Path) -> TestClient:
    settings = ServiceSettings(database_url=f"sqlite:///{tmp_path / 'db.sqlite'}", api_keys="a-key")
    return TestClient(create_app(settings))  # no lifespan: the page needs no database


def _modules() -> dict[str, list[str]]:
    """Every module reachable from main.js (paths under STATIC) -> the paths it imports."""
    graph: dict[str, list[str]] = {}
    todo = [ENTRY]
    while todo:
        name = todo.pop()
        if name in graph:
            continue
        text = (STATIC / name).read_text()
        specs = IMPORT.findall(text)
        for spec in specs:
            assert spec.startswith(("./", "../")), f"{name} imports {spec!r}: only relative paths"
            assert spec.endswith(".js"), f"{name} imports {spec!r}: browsers need the file name"
        graph[name] = [
            posixpath.normpath(posixpath.join(posixpath.dirname(name), s)) for s in specs
        ]
        for dep in graph[name]:
            assert not dep.startswith(".."), f"{name} imports {dep!r}, outside the dashboard"
            assert (STATIC / dep).is_file(), f"{name} imports {dep!r}, which does not exist"
        todo.extend(graph[name])
    return graph


def _js_files() -> set[str]:
    return {p.relative_to(STATIC).as_posix() for p in STATIC.rglob("*.js")}


def test_page_and_assets_are_served_without_a_key(client: TestClient) -> None:
    page = client.get("/")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    csp = page.headers["content-security-policy"]
    assert "default-src 'self'" in csp
    assert re.search(r'<script type="module" src="/dashboard/js/main\.js"></script>', page.text)
    css = client.get("/dashboard/style.css")
    assert css.status_code == 200
    assert css.headers["content-type"].startswith("text/css")
    assert css.content == (STATIC / "style.css").read_bytes()
    assert client.get("/api/searches").status_code == 401  # the data still needs the key


def test_every_module_main_imports_is_served_as_javascript(client: TestClient) -> None:
    graph = _modules()
    assert {"js/api.js", "js/dom.js", "js/charts.js"} <= set(graph)
    for name in graph:
        r = client.get(f"/dashboard/{name}")
        assert r.status_code == 200, name
        assert r.headers["content-type"].startswith("text/javascript"), name
        assert r.headers["x-content-type-options"] == "nosniff"
        assert r.content == (STATIC / name).read_bytes(), name
    # No dead modules: every file under js/ is part of the page.
    assert _js_files() == set(graph), _js_files() ^ set(graph)


def test_modules_are_small_and_insert_text_only() -> None:
    for name in _js_files():
        text = (STATIC / name).read_text()
        assert len(text.splitlines()) <= MAX_LINES, f"{name}: over {MAX_LINES} lines"
        # API text goes in as text nodes: no markup parsing anywhere.
        assert not re.search(
            r"\.(?:inner|outer)HTML\b|insertAdjacentHTML|document\.write|\beval\(|new Function",
            text,
        ), name


@pytest.mark.parametrize(
    "url",
    [
        "/dashboard/app.js",  # the old single script is gone
        "/dashboard/index.html",
        "/dashboard/index.html.bak",
        "/dashboard/js",
        "/dashboard/js/",
        "/dashboard/js/nope.js",
        "/dashboard/js/../../routes/dashboard.py",
        "/dashboard/js/%2e%2e/%2e%2e/app.py",
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
    for name in ["index.html", "style.css", *sorted(_js_files())]:
        text = (STATIC / name).read_text().replace(SVG_NAMESPACE, "")
        assert not re.search(r"https?://|//cdn|@import|\burl\(", text), name
