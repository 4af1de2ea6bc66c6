"""Dashboard fixtures: the real app served by uvicorn on a free port, a queue runner beside it,
and a headless Debian Chromium driven by Playwright (never a downloaded browser).

Without Chromium or Playwright the browser tests skip on a developer's machine but fail under CI
(CI=true): there a skipped test would be an untested feature. `make test` installs Chromium
first (scripts/ensure-chromium.sh)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from live_server import LiveServer
from needs import cannot_run

from service import db
from service.runner import QueueRunner
from service.settings import ServiceSettings

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parent.parent / "artifacts"  # gitignored


class RunnerThread:
    """A QueueRunner claiming searches and exports in a background thread."""

    def __init__(self, settings: ServiceSettings) -> None:
        url = settings.resolved_database_url()
        db.upgrade(url)
        self.engine = db.make_engine(url)
        self.runner = QueueRunner(settings, db.make_sessions(self.engine))
        self.thread = threading.Thread(target=self.runner.run, daemon=True)

    def stop(self) -> None:
        self.runner.stop.set()
        self.thread.join(timeout=60)
        self.engine.dispose()


@pytest.fixture
def make_service(
    tmp_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Callable[..., LiveServer]]:
    """make_service(runner=True, **settings): a started API (and runner) on a fresh SQLite DB;
    with runner=False, `server.start_runner()` starts one later."""
    started: list[LiveServer | RunnerThread] = []

    def start_runner(settings: ServiceSettings) -> None:
        worker = RunnerThread(settings)
        worker.thread.start()
        started.append(worker)

    def make(*, runner: bool = True, **overrides: Any) -> LiveServer:
        values: dict[str, Any] = {
            "database_url": f"sqlite:///{tmp_path / 'optishear.db'}",
            "checkpoint_dir": tmp_path / "checkpoints",
            "heartbeat_seconds": 0.5,
            "poll_seconds": 0.1,
            "api_keys": (),
            "data_roots": (tmp_path_factory.getbasetemp(),),  # the tiny model and texts
            **overrides,
        }
        settings = ServiceSettings(**values)
        if runner:
            start_runner(settings)
        server = LiveServer(settings, lambda: start_runner(settings)).start()
        started.append(server)
        return server

    yield make
    for thing in reversed(started):
        thing.stop()


def _sync_api() -> Any:
    try:
        from playwright import sync_api  # optional: the dev extra
    except ImportError:
        cannot_run("Playwright is missing: pip install -e '.[dev]'")
    return sync_api


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    """Debian's Chromium, never a browser download (see the module docstring when missing)."""
    if not CHROMIUM.is_file():
        cannot_run(f"{CHROMIUM} is missing: `bash scripts/ensure-chromium.sh` installs it")
    with _sync_api().sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=str(CHROMIUM))
        yield chromium
        chromium.close()


@pytest.fixture
def artifacts() -> Path:
    """Where screenshots are kept for CI to collect (gitignored)."""
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS


@pytest.fixture
def page(browser: Any, artifacts: Path, request: pytest.FixtureRequest) -> Iterator[Any]:
    """A fresh browser context per test; page errors fail the test, a screenshot is kept."""
    context = browser.new_context(viewport={"width": 1400, "height": 1000}, accept_downloads=True)
    context.set_default_timeout(15_000)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    yield page
    page.screenshot(path=artifacts / f"{request.node.name}.png", full_page=True)
    context.close()
    assert not errors, f"JavaScript errors on the page: {errors}"


@pytest.fixture
def expect(browser: Any) -> Any:
    """Playwright's `expect` (auto-waiting assertions), once the browser is there."""
    return _sync_api().expect
