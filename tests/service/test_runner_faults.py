"""Runner faults on a real Postgres, with real worker processes: database outages mid-search
(through a killable TCP proxy), a runner killed mid-export, an unwritable checkpoint store;
and the retry helper that keeps a job through an outage."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import event, make_url, select, text
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError
from tcp_proxy import TcpProxy

from service import db
from service.app import create_app
from service.db import utcnow
from service.runner import QueueRunner, export_job, retry
from service.settings import ServiceSettings
from service.tables import Generation, RunnerRow, Search

SLOW_WORKER = Path(__file__).with_name("slow_worker.py")
# `optishear worker` whose export pauses once its tar is staged, so a test can kill it there.
PAUSED_EXPORT = """
import sys, time
from service.commands import main
from service.runner import export_job
write = export_job.write_archive
def paused(folder, dest):
    out = write(folder, dest)
    (dest.parent / "written").touch()
    time.sleep(120)
    return out
export_job.write_archive = paused
sys.exit(main(["worker"]))
"""
STORE_ERROR = (
    "the checkpoint store is not writable; the operator must fix the server's checkpoint_dir"
)


# -- the retry helper ---------------------------------------------------------------------------
class _Sessions:
    """A sessionmaker stand-in whose transactions raise the given errors, one per try."""

    def __init__(self, *errors: Exception) -> None:
        self.errors = list(errors)
        self.tries = 0

    @contextlib.contextmanager
    def begin(self):  # type: ignore[no-untyped-def]
        self.tries += 1
        if self.errors:
            raise self.errors.pop(0)
        yield "session"


def _refused() -> OperationalError:
    return OperationalError("SELECT 1", {}, Exception("connection refused"))


def test_retry_rides_out_lost_connections(caplog) -> None:
    dropped = DBAPIError("COMMIT", {}, Exception("server closed"), connection_invalidated=True)
    sessions = _Sessions(_refused(), dropped)
    pauses: list[float] = []
    with caplog.at_level(logging.WARNING, logger=retry.__name__):
        got = retry.transaction(
            sessions, lambda s: f"{s}!", seconds=60, what="storing x", sleep=pauses.append
        )
    assert got == "session!"
    assert sessions.tries == 3
    assert pauses == [0.5, 1.0]  # doubling
    assert [r.message.split(":")[0] for r in caplog.records] == ["storing x"] * 2


def test_retry_never_retries_an_integrity_error() -> None:
    sessions = _Sessions(IntegrityError("INSERT", {}, Exception("duplicate key")))
    with pytest.raises(IntegrityError):
        retry.transaction(sessions, lambda s: s, seconds=60, what="x", sleep=pytest.fail)
    assert sessions.tries == 1


def test_retry_gives_up_after_its_bound() -> None:
    sessions = _Sessions(*[_refused() for _ in range(50)])
    start = time.monotonic()
    with pytest.raises(retry.DatabaseOutageError, match=r"unreachable for 1\.5 s"):
        retry.transaction(sessions, lambda s: s, seconds=1.5, what="x")
    assert 1.4 < time.monotonic() - start < 3
    assert sessions.tries == 3  # 0.5 s, 1.0 s, then out of time


# -- database outages during a search ----------------------------------------------------------
def _worker(
    env_url: str, tmp_path: Path, *args: str, log: Path, lease: float
) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "OPTISHEAR_DATABASE_URL": env_url,
        "OPTISHEAR_CHECKPOINT_DIR": str(tmp_path / "checkpoints"),
        "OPTISHEAR_LEASE_SECONDS": str(lease),
        "OPTISHEAR_HEARTBEAT_SECONDS": "0.5",
        "OPTISHEAR_POLL_SECONDS": "0.1",
        "OPTISHEAR_DB_RETRY_SECONDS": "120",
    }
    with log.open("ab") as out:
        return subprocess.Popen([sys.executable, *args], env=env, stdout=out, stderr=out)


def _generations_done(engine, sid: str) -> int:  # type: ignore[no-untyped-def]
    with engine.connect() as conn:
        done = conn.scalar(select(Search.generations_done).where(Search.id == uuid.UUID(sid)))
        return int(done or 0)


OUTAGE_SECONDS = 20.0


@pytest.mark.postgres
@pytest.mark.slow
def test_database_outages_mid_search_cost_no_attempt(
    fresh_pg_url, search_body, poll, tmp_path, tmp_path_factory
) -> None:
    db.upgrade(fresh_pg_url)
    url = make_url(fresh_pg_url)
    proxy = TcpProxy(url.host or "127.0.0.1", url.port or 5432).start()
    direct = db.make_engine(fresh_pg_url)  # the test's own view, around the proxy
    try:
        _outages(direct, proxy, fresh_pg_url, search_body, poll, tmp_path, tmp_path_factory)
    finally:
        direct.dispose()  # a failed check must not leave a connection for a later test to see
        proxy.close()


def _outages(direct, proxy, fresh_pg_url, search_body, poll, tmp_path, tmp_path_factory) -> None:  # type: ignore[no-untyped-def]
    settings = ServiceSettings(
        database_url=fresh_pg_url,
        checkpoint_dir=tmp_path / "checkpoints",
        data_roots=(tmp_path_factory.getbasetemp(),),  # the tiny model's folder
        api_keys=(),
    )
    log = tmp_path / "worker.log"
    with TestClient(create_app(settings, migrate=False)) as client:
        body = search_body(generations=6, population=4)
        sid = client.post("/api/searches", json=body).json()["id"]
        total = client.get(f"/api/searches/{sid}").json()["progress"]["total_generations"]
        worker = _worker(
            proxy.url(fresh_pg_url), tmp_path, str(SLOW_WORKER), "0.5", log=log, lease=20
        )
        try:
            seen = 0
            for _ in range(3):  # three outages of 20 s (the lease's length), a generation apart
                deadline = time.monotonic() + 180
                while (done := _generations_done(direct, sid)) <= seen:
                    assert worker.poll() is None, log.read_text()
                    assert time.monotonic() < deadline, log.read_text()
                    time.sleep(0.05)
                assert done < total, "the search ended before the outages"
                seen = done
                proxy.cut()
                time.sleep(OUTAGE_SECONDS)
                proxy.restore()
            result = poll(client, f"/api/searches/{sid}", timeout=240)
        finally:
            worker.terminate()
            worker.wait(timeout=60)
        gens = client.get(f"/api/searches/{sid}/generations").json()
    with direct.connect() as conn:
        numbers = conn.scalars(
            select(Generation.number)
            .where(Generation.search_id == uuid.UUID(sid))
            .order_by(Generation.number)
        ).all()
    logged = log.read_text()
    assert result["status"] == "succeeded", (result, logged)
    assert result["attempts"] == 1, logged
    assert numbers == list(range(1, total + 1))
    assert [g["number"] for g in gens] == numbers
    assert proxy.cuts == 3
    # The outages hit the runner's job writes, which waited them out.
    assert "storing generation" in logged, logged
    assert "database unreachable" in logged


@pytest.mark.postgres
@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)
def test_a_generation_whose_commit_reply_was_lost_is_stored_once(
    client, search_body, thread_runner, poll, caplog
) -> None:
    sid = client.post("/api/searches", json=search_body(generations=3)).json()["id"]
    runner = thread_runner()
    lost: list[int] = []

    @event.listens_for(runner.runner.sessions, "after_flush")
    def note(session, _ctx) -> None:  # type: ignore[no-untyped-def]
        for obj in session.new:
            if isinstance(obj, Generation):
                session.info["generation"] = obj.number

    @event.listens_for(runner.runner.sessions, "after_commit")
    def lose_reply(session) -> None:  # type: ignore[no-untyped-def]
        if session.info.get("generation") == 2 and not lost:  # committed, then "disconnected"
            lost.append(2)
            raise OperationalError("COMMIT", {}, Exception("server closed the connection"))

    with caplog.at_level(logging.WARNING, logger=retry.__name__), runner:
        done = poll(client, f"/api/searches/{sid}")
    assert lost == [2]
    assert done["status"] == "succeeded", done
    assert done["attempts"] == 1
    gens = client.get(f"/api/searches/{sid}/generations").json()
    assert [g["number"] for g in gens] == [1, 2, 3]
    assert "storing generation 2" in caplog.text


# -- export staging ------------------------------------------------------------------------------
def _staged(store: Path, owner: str | None, *, age: float = 0.0) -> Path:
    folder = Path(tempfile.mkdtemp(dir=store, prefix=".export-"))
    (folder / "archive.tar").write_bytes(b"x" * 1000)
    if owner is not None:
        (folder / "owner").write_text(owner)
    if age:
        os.utime(folder, (time.time() - age, time.time() - age))
    return folder


@pytest.mark.postgres
@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)
def test_runner_start_sweeps_only_dead_runners_staging(settings, caplog) -> None:
    store = settings.resolved_checkpoint_dir()
    engine = db.make_engine(settings.database_url)
    with db.make_sessions(engine, write=True).begin() as session:
        for rid, ago in (("live", 0), ("stale", 300)):
            beat = utcnow() - timedelta(seconds=ago)
            session.add(RunnerRow(id=rid, hostname="h", pid=1, started_at=beat, heartbeat_at=beat))
    live, orphan_new = _staged(store, "live"), _staged(store, None)
    swept = [_staged(store, "stale"), _staged(store, "never-seen"), _staged(store, None, age=7200)]
    (store / "keep.tar").write_bytes(b"y")
    size = sum(p.stat().st_size for f in swept for p in f.iterdir())
    try:
        with caplog.at_level(logging.INFO, logger="service.runner.staging"):
            QueueRunner(settings, db.make_sessions(engine)).run(until_idle=True)
    finally:
        engine.dispose()
    assert live.is_dir()
    assert orphan_new.is_dir()  # maybe a runner between mkdir and its owner file
    assert (store / "keep.tar").is_file()
    assert not any(f.exists() for f in swept)
    assert f"swept 3 export staging folders, {size} bytes reclaimed" in caplog.text


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.postgres
@pytest.mark.slow
@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)
def test_export_killed_mid_way_is_swept_and_redone_byte_identical(
    client, settings, search_body, thread_runner, poll, tmp_path, caplog
) -> None:
    sid = client.post("/api/searches", json=search_body()).json()["id"]
    with thread_runner():
        assert poll(client, f"/api/searches/{sid}")["status"] == "succeeded"
    cid = client.post(f"/api/searches/{sid}/checkpoints", json={}).json()["id"]
    store = settings.resolved_checkpoint_dir()
    log = tmp_path / "worker.log"
    worker = _worker(settings.database_url, tmp_path, "-c", PAUSED_EXPORT, log=log, lease=2)
    try:
        deadline = time.monotonic() + 180
        while not (marks := list(store.glob(".export-*/written"))):
            assert worker.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
    finally:
        worker.send_signal(signal.SIGKILL)
        worker.wait()
    left = marks[0].parent
    first_tar = _sha256(left / "archive.tar")
    owner = (left / "owner").read_text()
    assert any(p.is_dir() for p in left.iterdir())  # the unpacked HF folder, too
    assert not (store / f"{cid}.tar").exists()

    engine = db.make_engine(settings.database_url)
    try:
        with engine.connect() as conn:  # the killed runner is live until its heartbeat ages
            beat = conn.scalar(select(RunnerRow.heartbeat_at).where(RunnerRow.id == owner))
        assert beat is not None
        time.sleep(max(0.0, (beat + timedelta(seconds=5.5) - utcnow()).total_seconds()))
        with caplog.at_level(logging.INFO, logger="service.runner.staging"):
            QueueRunner(settings, db.make_sessions(engine)).run(until_idle=True)
        assert not left.exists()
        assert "swept 1 export staging folders" in caplog.text
        ck = client.get(f"/api/checkpoints/{cid}").json()
        assert ck["status"] == "succeeded", ck
        assert ck["attempts"] == 2
        # The same candidate exported again, by another runner, later: the same bytes.
        assert ck["sha256"] == first_tar == _sha256(store / f"{cid}.tar")

        # And once more as a new checkpoint row (the first one's file lost, say).
        with engine.begin() as conn:
            conn.execute(text("UPDATE checkpoints SET status = 'failed'"))
        again = client.post(f"/api/searches/{sid}/checkpoints", json={}).json()
        assert again["id"] != cid
        QueueRunner(settings, db.make_sessions(engine)).run(until_idle=True)
    finally:
        engine.dispose()
    again = poll(client, f"/api/checkpoints/{again['id']}")
    assert again["status"] == "succeeded", again
    assert again["sha256"] == ck["sha256"]
    assert not list(store.glob(".export-*"))


# -- an unwritable store ------------------------------------------------------------------------
@pytest.mark.postgres
@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)
def test_unwritable_store_fails_the_export_at_once(
    make_settings, search_body, thread_runner, poll, tmp_path, monkeypatch, caplog
) -> None:
    store = tmp_path / "store"
    if os.geteuid() == 0:  # root writes through any mode bits: make it no folder at all
        store.write_text("not a folder")
    else:
        store.mkdir()
        store.chmod(0o555)
    # The API's store is fine: the runner's broke after the export was queued (or its machine
    # mounts another folder there).
    settings = make_settings(checkpoint_dir=store)
    try:
        with TestClient(create_app(make_settings())) as client:
            sid = client.post("/api/searches", json=search_body()).json()["id"]
            with thread_runner(settings):
                assert poll(client, f"/api/searches/{sid}")["status"] == "succeeded"

            def never(*_a: object, **_k: object) -> None:
                raise AssertionError("loaded the model for an unwritable store")

            monkeypatch.setattr(export_job, "load_model", never)
            cid = client.post(f"/api/searches/{sid}/checkpoints", json={}).json()["id"]
            with caplog.at_level(logging.INFO), thread_runner(settings):
                ck = poll(client, f"/api/checkpoints/{cid}")
    finally:
        if store.is_dir():
            store.chmod(0o755)
    assert ck["status"] == "failed", ck
    assert ck["attempts"] == 1
    assert ck["error"] == STORE_ERROR
    assert str(store) in caplog.text  # the operator's log names it
