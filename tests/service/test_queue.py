"""The queue: atomic claims under races, lease expiry and take-over, attempts, kill -9 recovery."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import uuid
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import select, update

from service import db, queue
from service.tables import Generation, JobStatus, Search

SLOW_WORKER = Path(__file__).with_name("slow_worker.py")


def _sessions(url):
    engine = db.make_engine(url)
    return engine, db.make_sessions(engine, write=True)


def test_two_runners_racing_exactly_one_claims(client, search_body, settings) -> None:
    url = settings.resolved_database_url()
    # Separate engines: separate connection pools, as two runner processes would have.
    engines = [_sessions(url) for _ in range(4)]
    try:
        for round_ in range(5):
            sid = client.post("/api/searches", json=search_body(seed=round_)).json()["id"]
            barrier = threading.Barrier(len(engines))
            won: list[object] = []

            def race(i: int, barrier: threading.Barrier, won: list[object]) -> None:
                barrier.wait()
                got = queue.claim(
                    engines[i][1], Search, f"runner-{i}", lease_seconds=30, max_attempts=3
                )
                if got is not None:
                    won.append((i, got))

            threads = [
                threading.Thread(target=race, args=(i, barrier, won)) for i in range(len(engines))
            ]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            assert len(won) == 1, won
            assert str(won[0][1]) == sid
            body = client.get(f"/api/searches/{sid}").json()
            assert body["status"] == "running"
            assert body["attempts"] == 1
    finally:
        for engine, _ in engines:
            engine.dispose()


def _expire(sessions, search_id) -> None:
    with sessions.begin() as s:
        s.execute(
            update(Search)
            .where(Search.id == search_id)
            .values(lease_expires_at=db.utcnow() - timedelta(seconds=1))
        )


def test_expired_lease_is_taken_over_and_attempts_are_limited(
    client, search_body, settings
) -> None:
    engine, sessions = _sessions(settings.resolved_database_url())
    try:
        sid = client.post("/api/searches", json=search_body()).json()["id"]
        claim = lambda owner: queue.claim(sessions, Search, owner, lease_seconds=30, max_attempts=2)
        first = claim("a")
        assert first is not None
        assert claim("b") is None  # leased
        with sessions.begin() as s:  # a live lease is renewed; the old owner loses it later
            assert queue.extend_lease(s, Search, first, "a", 30)
        _expire(sessions, first)
        assert claim("b") == first
        with sessions.begin() as s:
            assert not queue.extend_lease(s, Search, first, "a", 30)  # "a" lost it
            assert not queue.finish(s, Search, first, "a", JobStatus.SUCCEEDED)
        _expire(sessions, first)
        assert claim("c") is None  # two attempts used: given up instead of claimed
        body = client.get(f"/api/searches/{sid}").json()
        assert body["status"] == "failed"
        assert body["attempts"] == 2
        assert "gave up after 2 attempts" in body["error"]
    finally:
        engine.dispose()


def _worker(settings, delay: float) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "OPTISHEAR_DATABASE_URL": settings.resolved_database_url(),
        "OPTISHEAR_CHECKPOINT_DIR": str(settings.resolved_checkpoint_dir()),
        "OPTISHEAR_LEASE_SECONDS": "2",
        "OPTISHEAR_HEARTBEAT_SECONDS": "0.5",
        "OPTISHEAR_POLL_SECONDS": "0.1",
    }
    return subprocess.Popen(
        [sys.executable, str(SLOW_WORKER), str(delay)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def _front(client, sid):
    front = client.get(f"/api/searches/{sid}/front").json()["candidates"]
    return [(c["key"], c["objectives"]["gap"], c["recommended"]) for c in front], [
        c["objectives"]["error"] for c in front
    ]


@pytest.mark.slow
def test_runner_killed_mid_search_is_resumed_by_another(
    client, search_body, settings, thread_runner, poll
) -> None:
    body = search_body(generations=6, population=4)
    sid = client.post("/api/searches", json=body).json()["id"]
    first = _worker(settings, delay=0.4)
    try:
        poll(client, f"/api/searches/{sid}", lambda b: b["progress"]["generation"] >= 2, 180)
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    killed_at = client.get(f"/api/searches/{sid}").json()
    assert killed_at["status"] == "running"
    assert killed_at["progress"]["generation"] < 6, "the search ended before the kill"
    second = _worker(settings, delay=0.0)
    try:
        done = poll(client, f"/api/searches/{sid}", timeout=180)
    finally:
        second.terminate()
        second.wait(timeout=60)
    assert done["status"] == "succeeded", done
    assert done["attempts"] == 2

    # The same search, uninterrupted, in this process.
    ref_id = client.post("/api/searches", json=body, headers={"Idempotency-Key": "ref"}).json()[
        "id"
    ]
    with thread_runner():
        ref = poll(client, f"/api/searches/{ref_id}")
    assert ref["status"] == "succeeded"

    engine, sessions = _sessions(settings.resolved_database_url())
    try:
        with sessions() as s:

            def gens(search_id):
                rows = s.scalars(
                    select(Generation)
                    .where(Generation.search_id == search_id)
                    .order_by(Generation.number)
                ).all()
                return [(g.number, g.stage, g.stage_generation, g.evaluations) for g in rows], [
                    g.best_error for g in rows
                ]

            resumed, resumed_err = gens(uuid.UUID(sid))
            uninterrupted, ref_err = gens(uuid.UUID(ref_id))
    finally:
        engine.dispose()
    # No generation lost or duplicated, and the same ones as without the kill.
    assert [g[0] for g in resumed] == list(range(1, len(resumed) + 1))
    assert resumed == uninterrupted
    assert resumed_err == pytest.approx(ref_err, rel=1e-6)
    keys, errors = _front(client, sid)
    ref_keys, ref_errors = _front(client, ref_id)
    assert keys == ref_keys
    assert errors == pytest.approx(ref_errors, rel=1e-6)
    assert done["progress"]["evaluations"] == ref["progress"]["evaluations"]


def test_stopping_runner_hands_the_search_back(client, search_body, thread_runner, poll) -> None:
    sid = client.post("/api/searches", json=search_body(generations=40)).json()["id"]
    with thread_runner() as runner:
        poll(client, f"/api/searches/{sid}", lambda b: b["progress"]["generation"] >= 1)
        runner.stop.set()  # what SIGTERM does in `optishear worker`
    handed_back = client.get(f"/api/searches/{sid}").json()
    if handed_back["status"] == "succeeded":
        pytest.skip("the search space ran out before the stop")
    assert handed_back["status"] == "queued"
    assert handed_back["attempts"] == 0
    assert handed_back["progress"]["generation"] >= 1
    with thread_runner():
        done = poll(client, f"/api/searches/{sid}")
    assert done["status"] == "succeeded"
    assert done["attempts"] == 1
    gens = client.get(f"/api/searches/{sid}/generations").json()
    assert [g["number"] for g in gens] == list(range(1, len(gens) + 1))


def test_a_run_claims_no_other_search_once_its_own_has_ended(client, search_body, settings) -> None:
    """`optishear run` works the queue for its own search; an older search left behind (a
    killed run, its lease run out) must not hold that search's export back afterwards."""
    from service.runner import QueueRunner

    engine, sessions = _sessions(settings.resolved_database_url())
    try:
        orphan = uuid.UUID(client.post("/api/searches", json=search_body(seed=1)).json()["id"])
        own = uuid.UUID(client.post("/api/searches", json=search_body(seed=2)).json()["id"])
        runner = QueueRunner(settings, sessions, searches_until=own)
        assert not runner._searches_over()  # its own search is queued: older ones come first
        with sessions.begin() as s:
            s.execute(update(Search).where(Search.id == own).values(status=JobStatus.SUCCEEDED))
        assert runner._searches_over()
        assert runner.run_once() is False  # nothing claimed: the orphan stays queued
        with sessions() as s:
            assert s.get_one(Search, orphan).status == JobStatus.QUEUED
        # any other runner (`optishear serve`'s) still takes it
        assert queue.claim(sessions, Search, "serve", lease_seconds=30, max_attempts=3) == orphan
    finally:
        engine.dispose()
