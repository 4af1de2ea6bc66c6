"""Faults of real processes (issue 15): `serve` killed with -9 must not leave its runner child
behind, and `serve`, `worker`, `run` and `db upgrade` meet a database that is down with a
wait (serve, worker) and a one-line message, never a traceback."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from serve_process import (
    LEASE_SECONDS,
    OPTISHEAR,
    Serve,
    free_port,
    gone_within,
    request_json,
    serve_env,
    until,
)
from sqlalchemy import make_url, text
from tcp_proxy import TcpProxy

from service import db
from service.tables import JobStatus, Search

pytestmark = pytest.mark.slow

RETRY_LINE = re.compile(
    r"^optishear: database \S+ is unreachable \([^()\n]+\); retrying in \d+\.\d s$"
)


@pytest.fixture
def serve(tmp_path: Path, tiny_model_dir: Path) -> Iterator[Serve]:
    server = Serve(tmp_path, tiny_model_dir)
    try:
        yield server
    finally:
        server.stop()


def test_kill_9_of_serve_takes_its_idle_runner_child_along(serve: Serve) -> None:
    serve.ready()
    child = serve.runner_pid()
    serve.kill()
    gone_within(child, 20)


def test_kill_9_of_serve_hands_a_running_search_back(serve: Serve, search_body) -> None:
    serve.ready()
    child = serve.runner_pid()
    status, body = request_json(serve.url("/api/searches"), search_body(generations=400))
    assert status in (200, 201, 202), body
    sid = uuid.UUID(body["id"])

    def running() -> bool:
        search = request_json(serve.url(f"/api/searches/{sid}"))[1]
        assert search["status"] in ("queued", "running"), search
        return search["status"] == "running" and search["progress"]["generation"] >= 1

    until(running, 120, "the search running")
    serve.kill()
    # It stops after the current generation, else exits hard at 30 s; slack for a busy CPU.
    gone_within(child, 45)
    engine = db.make_engine(serve.db_url)
    try:
        with db.make_sessions(engine)() as session:
            search = session.get_one(Search, sid)
    finally:
        engine.dispose()
    if search.status == JobStatus.QUEUED:  # handed back after its generation
        assert search.lease_owner is None
    else:  # cut at the bound: no one renews its lease, so another runner takes it over
        assert search.status == JobStatus.RUNNING, search.status
        assert search.lease_expires_at is not None
        assert search.lease_expires_at <= db.utcnow() + timedelta(seconds=LEASE_SECONDS)


# -- the worker's own watch, one mechanism at a time ----------------------------------------
def _worker(tmp_path: Path, *flags: str, **popen: Any) -> tuple[subprocess.Popen[bytes], Path]:
    log = tmp_path / f"worker-{len(list(tmp_path.glob('worker-*')))}.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [*OPTISHEAR, "worker", *flags],
            env=serve_env(tmp_path, f"sqlite:///{tmp_path / 'worker.db'}"),
            stdout=out,
            stderr=subprocess.STDOUT,
            **popen,
        )
    return proc, log


def test_worker_stops_when_its_pipe_closes(tmp_path: Path) -> None:
    """The portable mechanism alone: our process lives on, only the pipe's write end closes."""
    r, w = os.pipe()
    proc, log = _worker(
        tmp_path, "--parent-pid", str(os.getpid()), "--parent-fd", str(r), pass_fds=(r,)
    )
    os.close(r)
    try:
        until(lambda: "working the queue" in log.read_text(), 120, "the worker up")
        os.close(w)
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    assert "parent process" in log.read_text()
    assert "(its pipe closed)" in log.read_text()


def test_an_orphan_that_does_not_stop_exits_at_the_bound(tmp_path: Path) -> None:
    """A runner stuck in a long generation: the watch exits hard once the grace is over."""
    script = (
        "import sys, time\n"
        "from service.commands.lifetime import ParentWatch\n"
        "watch = ParentWatch(int(sys.argv[1]), int(sys.argv[2]), grace=1.0)\n"
        "watch.on_orphan = lambda: None  # ignores the request to stop\n"
        "watch.start()\n"
        "print('watching', flush=True)\n"
        "time.sleep(120)\n"
    )
    r, w = os.pipe()
    proc = subprocess.Popen(
        [sys.executable, "-c", script, str(os.getpid()), str(r)],
        pass_fds=(r,),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    os.close(r)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "watching"
        start = time.monotonic()
        os.close(w)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 1, err
    assert time.monotonic() - start < 15
    assert "still running 1 s after the parent died: exiting" in err


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_worker_stops_on_its_parent_death_signal(tmp_path: Path) -> None:
    """Linux's mechanism alone: a parent that passes no pipe is killed with -9."""
    log = tmp_path / "worker.log"
    script = (
        "import os, subprocess, sys, time\n"
        "with open(sys.argv[1], 'wb') as log:\n"
        "    p = subprocess.Popen(sys.argv[2:] + ['--parent-pid', str(os.getpid())],"
        " stdout=log, stderr=subprocess.STDOUT)\n"
        "print(p.pid, flush=True)\n"
        "time.sleep(600)\n"
    )
    parent = subprocess.Popen(
        [sys.executable, "-c", script, str(log), *OPTISHEAR, "worker"],
        env=serve_env(tmp_path, f"sqlite:///{tmp_path / 'worker.db'}"),
        stdout=subprocess.PIPE,
    )
    assert parent.stdout is not None
    child = int(parent.stdout.readline())
    try:
        until(lambda: "working the queue" in log.read_text(), 120, "the worker up")
    finally:
        parent.kill()
        parent.wait(timeout=30)
        parent.stdout.close()
    gone_within(child, 20)
    assert "stopping after the current generation" in log.read_text()


def test_worker_whose_parent_died_before_it_started_exits(tmp_path: Path) -> None:
    """The race that the getppid() re-check closes: the parent is gone before the prctl."""
    gone = subprocess.Popen(["true"])
    gone.wait()
    proc, log = _worker(tmp_path, "--parent-pid", str(gone.pid))
    assert proc.wait(timeout=60) == 1
    assert f"parent process {gone.pid} is gone" in log.read_text()
    assert "working the queue" not in log.read_text()


# -- the database down at start ---------------------------------------------------------------
@pytest.mark.postgres
def test_worker_waits_for_the_database_then_migrates(tmp_path: Path, fresh_pg_url: str) -> None:
    target = make_url(fresh_pg_url)
    proxy = TcpProxy(target.host or "127.0.0.1", target.port or 5432, port=free_port())
    url = proxy.url(fresh_pg_url)  # nothing listens there yet
    err = tmp_path / "worker.err"
    with err.open("wb") as out:
        proc = subprocess.Popen(
            [*OPTISHEAR, "worker", "--once"],
            env=serve_env(tmp_path, url, OPTISHEAR_STARTUP_WAIT_SECONDS="30"),
            stdout=subprocess.DEVNULL,
            stderr=out,
        )
    try:
        until(lambda: "retrying in" in err.read_text(), 60, "a retry line")
        time.sleep(1)  # a second attempt or so: the backoff shows
        proxy.start()
        assert proc.wait(timeout=120) == 0, err.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
        proxy.close()
    log = err.read_text()
    assert "Traceback" not in log
    retries = [line for line in log.splitlines() if "is unreachable" in line]
    assert retries, log
    for line in retries:
        assert RETRY_LINE.match(line), line
        assert "(connection refused)" in line, line
    engine = db.make_engine(fresh_pg_url)
    try:
        with engine.connect() as conn:  # migrated through the proxy
            assert conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
    finally:
        engine.dispose()


@pytest.mark.parametrize("command", ["worker", "serve", "db upgrade", "run"])
def test_a_database_that_stays_down_gives_one_line(
    command: str, tmp_path: Path, tiny_model_dir: Path
) -> None:
    port = free_port()  # nothing listens there
    url = f"postgresql+psycopg://optishear:s3cret@127.0.0.1:{port}/optishear"
    argv = {
        "worker": ["worker", "--once"],
        "serve": ["serve", "--runner", "yes", "--port", str(free_port())],
        "db upgrade": ["db", "upgrade"],
        "run": [
            "run",
            "--model",
            str(tiny_model_dir / "model"),
            "--calib",
            str(tiny_model_dir / "calib.txt"),
            "--eval-text",
            str(tiny_model_dir / "eval.txt"),
        ],
    }[command]
    start = time.monotonic()
    done = subprocess.run(
        [*OPTISHEAR, *argv],
        check=False,
        env=serve_env(tmp_path, url, OPTISHEAR_STARTUP_WAIT_SECONDS="2"),
        capture_output=True,
        text=True,
        timeout=120,
    )
    took = time.monotonic() - start
    assert done.returncode != 0, done.stderr
    assert "Traceback" not in done.stderr
    assert "s3cret" not in done.stderr + done.stdout  # the password stays hidden
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("optishear: error: database postgresql+psycopg://optishear:***@"), last
    assert "is unreachable (connection refused)" in last
    if command in ("worker", "serve"):  # they waited, with retry lines, before giving up
        assert "gave up after 2 s" in last
        assert any(RETRY_LINE.match(line) for line in done.stderr.splitlines())
        assert took < 60, took  # 2 s of waiting plus the start of a Python process
