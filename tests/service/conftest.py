"""Service fixtures: a database per backend (SQLite file, or a throw-away Postgres database),
an app client, tiny search requests and runners in threads."""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from needs import cannot_run
from sqlalchemy import text
from store_checks import KEYS

from service import db
from service.app import create_app
from service.runner import QueueRunner
from service.settings import ServiceSettings

PG_ADMIN_URL = os.environ.get(
    "OPTISHEAR_TEST_POSTGRES", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)
BACKENDS = [
    pytest.param("sqlite", id="sqlite"),
    pytest.param("postgres", id="postgres", marks=pytest.mark.postgres),
]


def _pg_admin() -> Any:
    engine = db.make_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    except Exception as exc:  # noqa: BLE001 - any connection failure means: cannot run
        engine.dispose()
        cannot_run(f"PostgreSQL at {PG_ADMIN_URL} is not reachable: {type(exc).__name__}")
    return engine


def create_pg_database() -> tuple[Any, str, str]:
    """(admin engine, database name, URL) of a new, empty database with a random name."""
    admin = _pg_admin()
    name = f"optishear_test_{uuid.uuid4().hex[:12]}"
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    return admin, name, PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"


def drop_pg_database(admin: Any, name: str) -> None:
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    """One database for the whole test session, migrated once, dropped at the end."""
    admin, name, url = create_pg_database()
    try:
        db.upgrade(url)
        yield url
    finally:
        drop_pg_database(admin, name)


@pytest.fixture(params=BACKENDS)
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'optishear.db'}"
        return
    url = request.getfixturevalue("pg_url")
    yield url
    engine = db.make_engine(url)  # tests share the session's database: empty it after each
    with engine.begin() as conn:
        conn.execute(text("TRUNCATE searches, runners CASCADE"))
    engine.dispose()


@pytest.fixture
def make_settings(
    database_url: str, tmp_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> Callable[..., ServiceSettings]:
    def make(**overrides: Any) -> ServiceSettings:
        values: dict[str, Any] = {
            "database_url": database_url,
            # The tiny model and texts live under pytest's temporary folder.
            "data_roots": (tmp_path_factory.getbasetemp(),),
            "checkpoint_dir": tmp_path / "checkpoints",
            "lease_seconds": 30.0,
            "heartbeat_seconds": 0.5,
            "poll_seconds": 0.1,
            "api_keys": (),
            # Tests read a search right after a runner thread wrote it: no half-second copies
            # (tests/service/test_status_cache.py tests them; served processes keep them on).
            "status_cache_seconds": 0.0,
        }
        values.update(overrides)
        return ServiceSettings(**values)

    return make


@pytest.fixture
def settings(make_settings: Callable[..., ServiceSettings]) -> ServiceSettings:
    return make_settings()


@pytest.fixture
def client(settings: ServiceSettings) -> Iterator[TestClient]:
    with TestClient(create_app(settings)) as c:
        yield c


@pytest.fixture
def search_body(tiny_model_dir: Path) -> Callable[..., dict[str, Any]]:
    """A tiny search on the tiny Llama folder: seconds, in-process evaluation.

    NSGA-III alone over the first-order genomes: the opening screen of all 972 classes is
    tested on its own (tests/unit/test_screen.py, and once through the service in
    test_flow.py), not in every service test."""

    def body(**overrides: Any) -> dict[str, Any]:
        return {
            "model": str(tiny_model_dir / "model"),
            "population": 4,
            "generations": 2,
            "stages": "metric",
            "metric_space": "first_order",
            "screen": {"rungs": "off"},
            "calibration": {
                "source": str(tiny_model_dir / "calib.txt"),
                "n_samples": 4,
                "seq_len": 16,
            },
            "evaluation": {"text": str(tiny_model_dir / "eval.txt"), "seq_len": 32, "windows": 4},
            **overrides,
        }

    return body


class ThreadRunner:
    """A QueueRunner working in a background thread until stopped."""

    def __init__(self, settings: ServiceSettings, runner_id: str | None = None) -> None:
        url = settings.resolved_database_url()
        db.upgrade(url)  # as `optishear worker` does
        self.engine = db.make_engine(url)
        self.runner = QueueRunner(settings, db.make_sessions(self.engine), runner_id=runner_id)
        self.thread = threading.Thread(target=self.runner.run, daemon=True)

    def __enter__(self) -> QueueRunner:
        self.thread.start()
        return self.runner

    def __exit__(self, *exc: object) -> None:
        self.runner.stop.set()
        self.thread.join(timeout=60)
        self.engine.dispose()


@pytest.fixture
def thread_runner(settings: ServiceSettings) -> Callable[..., ThreadRunner]:
    return lambda s=None, **kw: ThreadRunner(s or settings, **kw)


def wait_for(
    client: TestClient, url: str, done: Callable[[dict[str, Any]], bool], timeout: float = 120
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        body = client.get(url).json()
        if done(body):
            return body
        if time.monotonic() > deadline:
            raise AssertionError(f"{url} not done after {timeout}s: {body}")
        time.sleep(0.1)


def finished(body: dict[str, Any]) -> bool:
    return body["status"] in ("succeeded", "failed", "cancelled")


@pytest.fixture
def poll() -> Callable[..., dict[str, Any]]:
    """poll(client, url, done=finished, timeout=120): GET until `done(body)`."""

    def run(
        client: TestClient,
        url: str,
        done: Callable[[dict[str, Any]], bool] = finished,
        timeout: float = 120,
    ) -> dict[str, Any]:
        return wait_for(client, url, done, timeout)

    return run


@pytest.fixture
def fresh_pg_url() -> Iterator[str]:
    """An empty Postgres database of its own (no migrations), dropped afterwards."""
    admin, name, url = create_pg_database()
    try:
        yield url
    finally:
        drop_pg_database(admin, name)


# Two user keys and an admin key: what each key may see and delete.


@pytest.fixture
def keyed(make_settings):
    settings = make_settings(**KEYS)
    with TestClient(create_app(settings)) as c:
        yield c, settings
