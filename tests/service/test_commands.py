"""`optishear db upgrade`, `optishear worker --once` and `optishear serve` as real processes."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from service import db

OPTISHEAR = [sys.executable, "-m", "optishear.cli"]


def _env(tmp_path: Path, url: str) -> dict[str, str]:
    return {
        **os.environ,
        "OPTISHEAR_DATABASE_URL": url,
        "OPTISHEAR_CACHE": str(tmp_path / "cache"),
        "OPTISHEAR_HEARTBEAT_SECONDS": "0.5",
        "OPTISHEAR_POLL_SECONDS": "0.1",
    }


@pytest.mark.slow  # 10-30 s: in `make test-all`
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_db_upgrade_and_worker_once(database_url, client, search_body, tmp_path) -> None:
    env = _env(tmp_path, database_url)
    subprocess.run([*OPTISHEAR, "db", "upgrade"], env=env, check=True, timeout=120)
    sid = client.post("/api/searches", json=search_body()).json()["id"]
    subprocess.run(
        [*OPTISHEAR, "worker", "--once"], env=env, check=True, timeout=300, capture_output=True
    )
    assert client.get(f"/api/searches/{sid}").json()["status"] == "succeeded"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _get(url: str) -> tuple[int, dict[str, object]]:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


@pytest.mark.slow
def test_serve_starts_a_runner_and_stops_it(tmp_path) -> None:
    port = _free_port()
    env = _env(tmp_path, f"sqlite:///{tmp_path / 'serve.db'}")
    env.pop("OPTISHEAR_EMBEDDED_RUNNER", None)
    server = subprocess.Popen(
        [*OPTISHEAR, "serve", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 120
        status, body = 0, {}
        while time.monotonic() < deadline:
            try:
                status, body = _get(f"http://127.0.0.1:{port}/readyz")
            except OSError:
                status = 0
            if status == 200:
                break
            time.sleep(0.3)
        assert status == 200, body  # the API answers and its runner beats
    finally:
        server.send_signal(signal.SIGTERM)
        _, err = server.communicate(timeout=120)
    log = err.decode()
    pid = int(log.split("runner process ")[1].split()[0])
    with pytest.raises(ProcessLookupError):  # the runner child went with the API
        os.kill(pid, 0)


def test_wait_for_database_backs_off_then_gives_up_in_one_line() -> None:
    port = _free_port()  # nothing listens there: each attempt is refused at once
    url = f"postgresql+psycopg://me:s3cret@127.0.0.1:{port}/x"
    now, pauses, said = [0.0], [], []

    def sleep(seconds: float) -> None:
        pauses.append(seconds)
        now[0] += seconds

    with pytest.raises(db.DatabaseUnavailableError) as caught:
        db.wait_for_database(url, 20, say=said.append, sleep=sleep, clock=lambda: now[0])
    assert pauses == [0.5, 1.0, 2.0, 4.0, 5.0, 5.0, 2.5]  # doubling, capped, cut at the end
    assert said[0] == (
        f"optishear: database postgresql+psycopg://me:***@127.0.0.1:{port}/x is unreachable "
        "(connection refused); retrying in 0.5 s"
    )
    message = str(caught.value)
    assert "\n" not in message
    assert "s3cret" not in message
    assert "(connection refused); gave up after 20 s" in message


def test_wait_for_database_returns_at_once_for_sqlite(tmp_path: Path) -> None:
    db.wait_for_database(f"sqlite:///{tmp_path / 'x.db'}", 0, say=pytest.fail, sleep=pytest.fail)


@pytest.mark.parametrize(
    ("driver_message", "reason"),
    [
        (
            (
                'connection failed: connection to server at "127.0.0.1", port 5999 failed: '
                "Connection refused\n\tIs the server running on that host and accepting "
                "TCP/IP connections?"
            ),
            "connection refused",
        ),
        (
            (
                'connection failed: connection to server at "127.0.0.1", port 5432 failed: '
                'FATAL:  database "nope" does not exist'
            ),
            'database "nope" does not exist',
        ),
        ("", "RuntimeError"),
    ],
)
def test_short_reason_is_one_line(driver_message: str, reason: str) -> None:
    assert db.short_reason(RuntimeError(driver_message)) == reason
