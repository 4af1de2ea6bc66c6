"""The status answers' short-lived copies (service.status_cache): bounded staleness, dropped by
this process's own writes, and every hit still checked against the caller's key."""

from __future__ import annotations

import uuid

import pytest
from fastapi.testclient import TestClient
from store_checks import KEYS, as_key

from service import db
from service.app import create_app
from service.status_cache import StatusCache
from service.tables import Search


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_copies_expire_and_are_dropped() -> None:
    clock = Clock()
    cache = StatusCache(0.5, max_entries=2, clock=clock)
    a, b, c = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    cache.put(a, "alice", b"{}")
    clock.now += 0.49
    hit = cache.get(a)
    assert hit is not None
    assert hit.owner == "alice"
    assert hit.body == b"{}"
    clock.now += 0.01
    assert cache.get(a) is None  # exactly `seconds` old: read again
    cache.put(a, "alice", b"1")
    cache.drop(a)
    assert cache.get(a) is None
    for ident in (a, b, c):  # the least recently written goes when a third arrives
        cache.put(ident, "alice", b"x")
    assert cache.get(a) is None
    assert cache.get(b) is not None
    assert cache.get(c) is not None
    off = StatusCache(0.0)
    off.put(a, "alice", b"x")
    assert off.get(a) is None


def _set_attempts(settings, search_id: str, attempts: int) -> None:
    engine = db.make_engine(settings.resolved_database_url())
    with db.make_sessions(engine, write=True)() as session, session.begin():
        session.get(Search, uuid.UUID(search_id)).attempts = attempts
    engine.dispose()


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_polls_read_the_copy_until_a_write_of_this_process(make_settings, search_body) -> None:
    settings = make_settings(status_cache_seconds=60.0, **KEYS)
    with TestClient(create_app(settings)) as client:
        sid = client.post("/api/searches", json=search_body(), headers=as_key("alice-key"))
        sid = sid.json()["id"]
        url = f"/api/searches/{sid}"
        first = client.get(url, headers=as_key("alice-key"))
        assert first.status_code == 200
        assert first.json()["attempts"] == 0
        # Another process (a runner) changes the row: the copy answers until it expires...
        _set_attempts(settings, sid, 2)
        again = client.get(url, headers=as_key("alice-key"))
        assert again.content == first.content
        # ...but never to another key, and an admin sees the same copy.
        assert client.get(url, headers=as_key("bob-key")).status_code == 404
        assert client.get(url, headers=as_key("root-key")).json() == first.json()
        # This process's own write drops it: the next poll reads the row.
        cancel = client.post(f"{url}/cancel", headers=as_key("alice-key"))
        assert cancel.status_code == 202
        after = client.get(url, headers=as_key("alice-key")).json()
        assert after["status"] == "cancelled"
        assert after["attempts"] == 2
        assert client.delete(url, headers=as_key("alice-key")).status_code == 204
        assert client.get(url, headers=as_key("alice-key")).status_code == 404


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_without_copies_every_poll_reads_the_row(make_settings, search_body) -> None:
    with TestClient(create_app(make_settings(status_cache_seconds=0.0))) as client:
        sid = client.post("/api/searches", json=search_body()).json()["id"]
        assert client.get(f"/api/searches/{sid}").json()["attempts"] == 0
        _set_attempts(make_settings(), sid, 1)
        assert client.get(f"/api/searches/{sid}").json()["attempts"] == 1
