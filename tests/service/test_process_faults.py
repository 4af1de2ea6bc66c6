"""Faults of real processes (issue 15): `serve` killed with -9 must not leave its runner child
behind, and `serve`, `worker`, `run` and `db upgrade` meet a database that is down with a
wait (serve, worker) and a one-line message, never a traceback."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import make_url, text
from tcp_proxy import TcpProxy

from service import db
from service.tables import JobStatus, Search

pytestmark = pytest.mark.slow

_ENTRY = Path(sys.executable).with_name("optishear")  # the installed console script
OPTISHEAR = [str(_ENTRY)] if _ENTRY.exists() else [sys.executable, "-m", "optishear.cli"]
RETRY_LINE = re.compile(
    r"^optishear: database \S+ is unreachable \([^()\n]+\); retrying in \d+\.\d s$"
)
LEASE_SECONDS = 20.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _env(tmp_path: Path, url: str, **extra: str) -> dict[str, str]:
    env = {
        **os.environ,
        "OPTISHEAR_DATABASE_URL": url,
        "OPTISHEAR_CACHE": str(tmp_path / "cache"),
        "OPTISHEAR_CHECKPOINT_DIR": str(tmp_path / "checkpoints"),
        "OPTISHEAR_HEARTBEAT_SECONDS": "0.5",
        "OPTISHEAR_POLL_SECONDS": "0.1",
        "OPTISHEAR_LEASE_SECONDS": str(LEASE_SECONDS),
        "OPTISHEAR_WORKERS": "0",
        **extra,
    }
    for name in ("OPTISHEAR_API_KEYS", "OPTISHEAR_ADMIN_KEYS", "OPTISHEAR_EMBEDDED_RUNNER"):
        env.pop(name, None)
    return env


def _request(url: str, body: dict[str, Any] | None = None) -> tuple[int, dict[str, Any]]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def _until(check: Callable[[], Any], timeout: float, what: str, every: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"{what}: not within {timeout:g} s")


def _alive(pid: int) -> bool:
    """Running (a zombie that no one has reaped yet counts as gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True  # no /proc: kill(0) said it exists
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def _children(pid: int) -> list[int]:
    try:
        import psutil
    except ImportError:
        tasks = Path(f"/proc/{pid}/task").glob("*/children")
        return [int(c) for f in tasks for c in f.read_text().split()]
    return [c.pid for c in psutil.Process(pid).children()]


class Serve:
    """`optishear serve --runner yes` on a free port, its log in a file (a pipe could fill)."""

    def __init__(self, tmp_path: Path, data_root: Path, log: str = "serve.log", **env: str) -> None:
        self.port = _free_port()
        self.db_url = f"sqlite:///{tmp_path / 'serve.db'}"  # a second Serve shares it
        self.log = tmp_path / log
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                [*OPTISHEAR, "serve", "--runner", "yes", "--port", str(self.port)],
                env=_env(tmp_path, self.db_url, OPTISHEAR_DATA_ROOTS=str(data_root), **env),
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def ready(self) -> None:
        def up() -> bool:
            assert self.proc.poll() is None, self.log.read_text()
            try:
                return _request(self.url("/readyz"))[0] == 200  # the API and its runner
            except OSError:
                return False

        _until(up, 180, "serve ready", every=0.5)

    def runner_pid(self) -> int:
        kids = _until(lambda: _children(self.proc.pid), 30, "the runner child")
        assert len(kids) == 1, kids
        return int(kids[0])

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)


@pytest.fixture
def serve(tmp_path: Path, tiny_model_dir: Path) -> Iterator[Serve]:
    server = Serve(tmp_path, tiny_model_dir)
    try:
        yield server
    finally:
        server.stop()


def _gone_within(pid: int, timeout: float) -> float:
    start = time.monotonic()
    try:
        _until(lambda: not _alive(pid), timeout, f"runner child {pid} gone", every=0.1)
    except AssertionError:
        os.kill(pid, signal.SIGKILL)  # don't leave it to the rest of the suite
        raise
    return time.monotonic() - start


def test_kill_9_of_serve_takes_its_idle_runner_child_along(serve: Serve) -> None:
    serve.ready()
    child = serve.runner_pid()
    serve.kill()
    _gone_within(child, 20)


def test_kill_9_of_serve_hands_a_running_search_back(serve: Serve, search_body) -> None:
    serve.ready()
    child = serve.runner_pid()
    status, body = _request(serve.url("/api/searches"), search_body(generations=400))
    assert status in (200, 201, 202), body
    sid = uuid.UUID(body["id"])

    def running() -> bool:
        search = _request(serve.url(f"/api/searches/{sid}"))[1]
        assert search["status"] in ("queued", "running"), search
        return search["status"] == "running" and search["progress"]["generation"] >= 1

    _until(running, 120, "the search running")
    serve.kill()
    # It stops after the current generation, else exits hard at 30 s; slack for a busy CPU.
    _gone_within(child, 45)
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


def _tagged(tag: str) -> list[int]:
    """The live processes whose environment carries `tag`: a serve, its runner and everything
    they started (Ray's daemons and workers inherit the environment), orphans included."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:  # gone, or not ours to read
            continue
        if f"OPTISHEAR_TEST_TAG={tag}".encode() in environ.split(b"\0") and _alive(int(entry.name)):
            found.append(int(entry.name))
    return found


def _front(url: str) -> list[tuple[str, Any, float]]:
    return [(c["key"], c["objectives"], c["sparsity"]) for c in _request(url)[1]["candidates"]]


@pytest.mark.ray
@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="reads /proc/*/environ")
def test_kill_9_of_serve_mid_search_on_ray_leaves_nothing_and_the_search_resumes(
    tmp_path: Path, tiny_model_dir: Path, search_body
) -> None:
    """kill -9 of `serve` while its runner searches on 2 Ray actors: no runner, Ray daemon or
    actor outlives it, and a new `serve` on the same database finishes the search with the
    front of one that was never interrupted."""
    tag = uuid.uuid4().hex
    ray_env = {"OPTISHEAR_WORKERS": "2", "OPTISHEAR_TEST_TAG": tag}
    body = search_body(generations=5)
    first = Serve(tmp_path, tiny_model_dir, **ray_env)
    try:
        first.ready()
        child = first.runner_pid()
        sid = _request(first.url("/api/searches"), body)[1]["id"]

        def running() -> bool:
            search = _request(first.url(f"/api/searches/{sid}"))[1]
            assert search["status"] in ("queued", "running"), search
            return search["status"] == "running" and search["progress"]["generation"] >= 1

        _until(running, 180, "the search running on Ray")
        assert len(_tagged(tag)) > 3, "Ray's daemons and actors run beside serve and its runner"
        first.kill()
        _gone_within(child, 45)
        _until(lambda: not _tagged(tag), 60, "every process of the killed serve gone")
    finally:
        first.stop()
    second = Serve(tmp_path, tiny_model_dir, log="serve-again.log", **ray_env)
    try:
        second.ready()
        again = _request(second.url("/api/searches"), body)[1]["id"]  # never interrupted
        for search_id in (sid, again):
            _until(
                lambda s=search_id: (
                    _request(second.url(f"/api/searches/{s}"))[1]["status"]
                    in ("succeeded", "failed")
                ),
                300,
                f"search {search_id} finished",
                every=1.0,
            )
        resumed = _request(second.url(f"/api/searches/{sid}"))[1]
        assert resumed["status"] == "succeeded", resumed
        assert _front(second.url(f"/api/searches/{sid}/front")) == _front(
            second.url(f"/api/searches/{again}/front")
        )
    finally:
        second.stop()
    _until(lambda: not _tagged(tag), 60, "every process of the second serve gone")


# -- the worker's own watch, one mechanism at a time ----------------------------------------
def _worker(tmp_path: Path, *flags: str, **popen: Any) -> tuple[subprocess.Popen[bytes], Path]:
    log = tmp_path / f"worker-{len(list(tmp_path.glob('worker-*')))}.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [*OPTISHEAR, "worker", *flags],
            env=_env(tmp_path, f"sqlite:///{tmp_path / 'worker.db'}"),
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
        _until(lambda: "working the queue" in log.read_text(), 120, "the worker up")
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
        env=_env(tmp_path, f"sqlite:///{tmp_path / 'worker.db'}"),
        stdout=subprocess.PIPE,
    )
    assert parent.stdout is not None
    child = int(parent.stdout.readline())
    try:
        _until(lambda: "working the queue" in log.read_text(), 120, "the worker up")
    finally:
        parent.kill()
        parent.wait(timeout=30)
        parent.stdout.close()
    _gone_within(child, 20)
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
    proxy = TcpProxy(target.host or "127.0.0.1", target.port or 5432, port=_free_port())
    url = proxy.url(fresh_pg_url)  # nothing listens there yet
    err = tmp_path / "worker.err"
    with err.open("wb") as out:
        proc = subprocess.Popen(
            [*OPTISHEAR, "worker", "--once"],
            env=_env(tmp_path, url, OPTISHEAR_STARTUP_WAIT_SECONDS="30"),
            stdout=subprocess.DEVNULL,
            stderr=out,
        )
    try:
        _until(lambda: "retrying in" in err.read_text(), 60, "a retry line")
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
    port = _free_port()  # nothing listens there
    url = f"postgresql+psycopg://optishear:s3cret@127.0.0.1:{port}/optishear"
    argv = {
        "worker": ["worker", "--once"],
        "serve": ["serve", "--runner", "yes", "--port", str(_free_port())],
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
        env=_env(tmp_path, url, OPTISHEAR_STARTUP_WAIT_SECONDS="2"),
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
