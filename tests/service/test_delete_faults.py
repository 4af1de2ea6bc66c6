"""Deletes killed with -9 between their steps (a real child process, stopped by its `step`
hook right after a step committed), then the API restarted: its start-up sweep finishes the
delete, and no row points to a missing file nor any file lacks a row. Also a compact build
killed midway: its temporary file outlives it only until the next sweep."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select
from store_checks import (
    age_exports,
    assert_consistent,
    db_sessions,
    dispose_engines,
    seed_exports,
    store_dir,
    store_files,
)

from service.app import create_app
from service.housekeeping import FILES_REMOVED, MARKED
from service.settings import ServiceSettings
from service.tables import Checkpoint, Search

# The delete, as the API or `optishear store` runs it; `step` stops this process after the
# named step, and says so on stdout for the test to kill it there.
CHILD = r"""
import sys, time, uuid
from service import db
from service.housekeeping import Housekeeping
from service.settings import ServiceSettings
from service.store import CheckpointStore

action, ident, stop_at = sys.argv[1:4]

def step(name):
    if name == stop_at:
        print(name, flush=True)
        time.sleep(600)

settings = ServiceSettings()  # OPTISHEAR_* from the environment
engine = db.make_engine(settings.resolved_database_url())
hk = Housekeeping(db.make_sessions(engine), CheckpointStore.of(settings), settings, step=step)
if action == "search":
    hk.delete_search(uuid.UUID(ident))
elif action == "checkpoint":
    hk.delete_checkpoint(uuid.UUID(ident))
else:
    hk.apply_retention()
print("finished", flush=True)
"""

# A compact build holding the store's lock, its temporary file half written.
BUILDER = r"""
import sys, time
from pathlib import Path
from service.store import CheckpointStore

store = CheckpointStore(Path(sys.argv[1]))
with store.compact_lock():
    (store.root / f".{sys.argv[2]}.compact.tmp-killed").write_bytes(b"half an archive")
    print("building", flush=True)
    time.sleep(600)
"""


@pytest.fixture(autouse=True)
def _engines():
    yield
    dispose_engines()


def _env(settings: ServiceSettings, **extra: str) -> dict[str, str]:
    env = {
        **os.environ,
        "OPTISHEAR_DATABASE_URL": settings.resolved_database_url(),
        "OPTISHEAR_CHECKPOINT_DIR": str(settings.checkpoint_dir),
        **extra,
    }
    for name in ("OPTISHEAR_KEEP_CHECKPOINTS", "OPTISHEAR_STORE_MAX_BYTES"):
        if name not in extra:
            env.pop(name, None)
    return env


def _kill_at(script: str, args: list[str], env: dict[str, str], line: str) -> None:
    """Run the script until it prints `line`, then kill -9 it."""
    proc = subprocess.Popen(
        [sys.executable, "-c", script, *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        said = proc.stdout.readline().strip()
        if said != line:
            proc.kill()
            _, err = proc.communicate(timeout=30)
            raise AssertionError(f"the child said {said!r}, not {line!r}: {err[-3000:]}")
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(timeout=30) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=30)


def _marked(settings: ServiceSettings) -> int:
    with db_sessions(settings)() as session:
        return sum(
            int(
                session.scalar(
                    select(func.count()).select_from(m).where(m.deleting_at.is_not(None))
                )
                or 0
            )
            for m in (Search, Checkpoint)
        )


@pytest.mark.parametrize("stop_at", [MARKED, FILES_REMOVED])
def test_a_search_delete_killed_between_its_steps(settings, stop_at) -> None:
    sid, ids = seed_exports(settings, ["succeeded", "failed", "succeeded"])
    keep_sid, (keep,) = seed_exports(settings, ["succeeded"])
    _kill_at(CHILD, ["search", str(sid), stop_at], _env(settings), stop_at)
    # Left half done: every row marked (the API shows none of them), each file still there or
    # already gone, but never a file without its row.
    assert _marked(settings) == 1 + len(ids)
    tars = {f"{ids[0]}.tar", f"{ids[2]}.tar"}
    assert store_files(settings) == {f"{keep}.tar"} | (tars if stop_at == MARKED else set())
    with TestClient(create_app(settings)) as client:  # the restart sweeps
        assert client.get(f"/api/searches/{sid}").status_code == 404
        assert [s["id"] for s in client.get("/api/searches").json()["items"]] == [str(keep_sid)]
        for ck in ids:
            assert client.get(f"/api/checkpoints/{ck}").status_code == 404
        assert client.get(f"/api/checkpoints/{keep}/download").status_code == 200
    assert _marked(settings) == 0
    assert store_files(settings) == {f"{keep}.tar"}
    with db_sessions(settings)() as session:
        assert session.get(Search, sid) is None
    assert_consistent(settings)


@pytest.mark.parametrize("stop_at", [MARKED, FILES_REMOVED])
def test_a_checkpoint_delete_killed_between_its_steps(settings, stop_at) -> None:
    sid, (ck, other) = seed_exports(settings, ["succeeded", "succeeded"])
    _kill_at(CHILD, ["checkpoint", str(ck), stop_at], _env(settings), stop_at)
    assert _marked(settings) == 1
    assert (f"{ck}.tar" in store_files(settings)) == (stop_at == MARKED)
    with TestClient(create_app(settings)) as client:
        assert client.get(f"/api/checkpoints/{ck}").status_code == 404
        listed = client.get(f"/api/searches/{sid}/checkpoints").json()
        assert [c["id"] for c in listed] == [str(other)]
    assert store_files(settings) == {f"{other}.tar"}
    assert_consistent(settings)


@pytest.mark.parametrize("stop_at", [MARKED, FILES_REMOVED])
def test_retention_killed_between_its_steps(make_settings, stop_at) -> None:
    settings = make_settings(keep_checkpoints=1)
    _sid, ids = seed_exports(settings, ["succeeded"] * 3)
    age_exports(settings, ids)
    _kill_at(
        CHILD, ["retention", "-", stop_at], _env(settings, OPTISHEAR_KEEP_CHECKPOINTS="1"), stop_at
    )
    assert _marked(settings) == 2  # both victims marked in one transaction
    with TestClient(create_app(settings)) as client:
        for ck in ids[:2]:
            assert client.get(f"/api/checkpoints/{ck}").status_code == 404
        assert client.get(f"/api/checkpoints/{ids[2]}").json()["status"] == "succeeded"
    assert store_files(settings) == {f"{ids[2]}.tar"}
    assert_consistent(settings)


def test_a_compact_build_killed_midway_leaves_nothing_after_the_sweep(settings) -> None:
    _sid, (ck,) = seed_exports(settings, ["succeeded"])
    store = store_dir(settings)
    partial = store / f".{ck}.compact.tmp-killed"
    proc = subprocess.Popen(
        [sys.executable, "-c", BUILDER, str(store), str(ck)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "building"
        with TestClient(create_app(settings)):  # a sweep while the build holds the lock
            pass
        assert partial.exists()
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=30)
    with TestClient(create_app(settings)):  # the kernel released the lock with the process
        pass
    assert not partial.exists()
    assert store_files(settings) == {f"{ck}.tar"}
    assert_consistent(settings)


def test_the_child_deletes_when_not_stopped(settings) -> None:
    """The hook is only a pause point: run to the end, the child's delete is complete."""
    sid, (ck,) = seed_exports(settings, ["succeeded"])
    done = subprocess.run(
        [sys.executable, "-c", CHILD, "search", str(sid), "never"],
        env=_env(settings),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "finished"
    assert store_files(settings) == set()
    assert _marked(settings) == 0
    with db_sessions(settings)() as session:
        assert session.get(Checkpoint, ck) is None
    assert_consistent(settings)
