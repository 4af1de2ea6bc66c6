"""`optishear serve` and its runner as real processes, for the fault tests: start one on a free
port, ask its API, wait for a condition, and tell when a process is gone."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

_ENTRY = Path(sys.executable).with_name("optishear")  # the installed console script
OPTISHEAR = [str(_ENTRY)] if _ENTRY.exists() else [sys.executable, "-m", "optishear.cli"]
LEASE_SECONDS = 20.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def serve_env(tmp_path: Path, url: str, **extra: str) -> dict[str, str]:
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


def request_json(url: str, body: dict[str, Any] | None = None) -> tuple[int, dict[str, Any]]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def until(check: Callable[[], Any], timeout: float, what: str, every: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"{what}: not within {timeout:g} s")


def alive(pid: int) -> bool:
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


def children(pid: int) -> list[int]:
    try:
        import psutil
    except ImportError:
        tasks = Path(f"/proc/{pid}/task").glob("*/children")
        return [int(c) for f in tasks for c in f.read_text().split()]
    return [c.pid for c in psutil.Process(pid).children()]


class Serve:
    """`optishear serve --runner yes` on a free port, its log in a file (a pipe could fill)."""

    def __init__(self, tmp_path: Path, data_root: Path, log: str = "serve.log", **env: str) -> None:
        self.port = free_port()
        self.db_url = f"sqlite:///{tmp_path / 'serve.db'}"  # a second Serve shares it
        self.log = tmp_path / log
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                [*OPTISHEAR, "serve", "--runner", "yes", "--port", str(self.port)],
                env=serve_env(tmp_path, self.db_url, OPTISHEAR_DATA_ROOTS=str(data_root), **env),
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def ready(self) -> None:
        def up() -> bool:
            assert self.proc.poll() is None, self.log.read_text()
            try:
                return request_json(self.url("/readyz"))[0] == 200  # the API and its runner
            except OSError:
                return False

        until(up, 180, "serve ready", every=0.5)

    def runner_pid(self) -> int:
        kids = until(lambda: children(self.proc.pid), 30, "the runner child")
        assert len(kids) == 1, kids
        return int(kids[0])

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)


def gone_within(pid: int, timeout: float) -> float:
    start = time.monotonic()
    try:
        until(lambda: not alive(pid), timeout, f"runner child {pid} gone", every=0.1)
    except AssertionError:
        os.kill(pid, signal.SIGKILL)  # don't leave it to the rest of the suite
        raise
    return time.monotonic() - start
