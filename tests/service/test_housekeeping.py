"""Keeping the checkpoint store tidy (service.housekeeping): DELETE of searches and checkpoints
(204, 404 for unknown ids and other keys', 409 while queued or running), the disk reclaimed,
retention (newest N, size cap) and the sweep (orphans, interrupted deletes, lost archives).
On SQLite and Postgres. The store's numbers and downloads: test_store_downloads; migration 0008
and `optishear store`: test_store_command."""

from __future__ import annotations

import logging
import uuid

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select
from store_checks import (
    age_exports,
    as_key,
    assert_consistent,
    count_rows,
    db_sessions,
    dispose_engines,
    housekeeper,
    seed_exports,
    set_row,
    store_dir,
    store_files,
)

from service import db
from service.app import create_app
from service.settings import hash_key
from service.tables import (
    CandidateRow,
    Checkpoint,
    Generation,
    JobStatus,
    Measurement,
    Search,
    SearchGenome,
)


@pytest.fixture(autouse=True)
def _engines():
    yield
    dispose_engines()


# -- DELETE ---------------------------------------------------------------------------------
def test_delete_checkpoint_reclaims_its_archive(client, settings) -> None:
    sid, (ck, other) = seed_exports(settings, ["succeeded", "succeeded"])
    before = store_files(settings)
    assert before == {f"{ck}.tar", f"{other}.tar"}
    r = client.delete(f"/api/checkpoints/{ck}")
    assert (r.status_code, r.content) == (204, b"")
    assert store_files(settings) == {f"{other}.tar"}
    assert client.get(f"/api/checkpoints/{ck}").status_code == 404
    assert client.get(f"/api/checkpoints/{ck}/download").status_code == 404
    assert client.delete(f"/api/checkpoints/{ck}").status_code == 404
    assert [c["id"] for c in client.get(f"/api/searches/{sid}/checkpoints").json()] == [str(other)]
    assert client.get(f"/api/searches/{sid}").status_code == 200  # the search stays
    assert count_rows(settings, Checkpoint, Checkpoint.id == ck) == 0
    # Its candidate can be exported again: a new export, not the deleted one.
    with db_sessions(settings)() as session:
        candidate = session.scalars(
            select(CandidateRow.id).where(CandidateRow.search_id == sid, CandidateRow.rank == 0)
        ).first()
    again = client.post(f"/api/searches/{sid}/checkpoints", json={"candidate_id": str(candidate)})
    assert again.status_code == 202, again.text
    assert again.json()["id"] not in (str(ck), str(other))
    assert_consistent(settings)


def test_delete_search_takes_everything_of_it(client, settings) -> None:
    sid, ids = seed_exports(settings, ["succeeded", "failed", "succeeded"])
    keep_sid, keep_ids = seed_exports(settings, ["succeeded"])
    assert count_rows(settings, SearchGenome, SearchGenome.search_id == sid) > 0
    assert client.get("/api/genomes").json()["total"] > 0
    r = client.delete(f"/api/searches/{sid}")
    assert (r.status_code, r.content) == (204, b"")
    for path in ("", "/front", "/candidates", "/generations", "/checkpoints"):
        assert client.get(f"/api/searches/{sid}{path}").status_code == 404, path
    for ck in ids:
        assert client.get(f"/api/checkpoints/{ck}").status_code == 404
    assert client.delete(f"/api/searches/{sid}").status_code == 404
    for model in (Search, Generation, CandidateRow, Checkpoint, SearchGenome):
        column = model.id if model is Search else model.search_id
        assert count_rows(settings, model, column == sid) == 0, model.__tablename__
    assert store_files(settings) == {f"{keep_ids[0]}.tar"}
    listed = client.get("/api/searches").json()
    assert [s["id"] for s in listed["items"]] == [str(keep_sid)]
    assert {g["search_id"] for g in client.get("/api/genomes").json()["items"]} == {str(keep_sid)}
    # A later search cannot take genomes from it any more.
    seeded = client.post(
        "/api/searches", json={"model": "smollm2-135m", "metric_from": {"search": str(sid)}}
    )
    assert seeded.status_code == 422
    assert f"no search {sid}" in seeded.json()["detail"]
    assert_consistent(settings)


def test_deletes_wait_for_queued_and_running_jobs(client, settings, search_body) -> None:
    queued = client.post("/api/searches", json=search_body()).json()["id"]
    r = client.delete(f"/api/searches/{queued}")
    assert r.status_code == 409
    assert "cancel it first" in r.json()["detail"]
    set_row(settings, Search, uuid.UUID(queued), status=JobStatus.RUNNING)
    r = client.delete(f"/api/searches/{queued}")
    assert r.status_code == 409
    assert "is running: cancel it first" in r.json()["detail"]
    assert client.post(f"/api/searches/{queued}/cancel").status_code == 202
    assert "stopping after a cancel" in client.delete(f"/api/searches/{queued}").json()["detail"]
    set_row(settings, Search, uuid.UUID(queued), status=JobStatus.CANCELLED)
    assert client.delete(f"/api/searches/{queued}").status_code == 204

    sid, (ck,) = seed_exports(settings, ["queued"])
    for status in (JobStatus.QUEUED, JobStatus.RUNNING):
        set_row(settings, Checkpoint, ck, status=status)
        r = client.delete(f"/api/checkpoints/{ck}")
        assert r.status_code == 409
        assert "wait for the export to finish" in r.json()["detail"]
        r = client.delete(f"/api/searches/{sid}")
        assert r.status_code == 409
        assert f"export in progress (checkpoint {ck})" in r.json()["detail"]
    set_row(settings, Checkpoint, ck, status=JobStatus.FAILED)
    assert client.delete(f"/api/checkpoints/{ck}").status_code == 204
    assert client.delete(f"/api/searches/{sid}").status_code == 204


def test_deletes_and_retention_wait_for_a_measurement(client, make_settings) -> None:
    settings = client.app.state.settings
    sid, (ck, newer) = seed_exports(settings, ["succeeded", "succeeded"])
    age_exports(settings, [ck, newer])
    measurement = uuid.uuid4()
    with db.for_writing(db_sessions(settings)).begin() as session:
        session.add(
            Measurement(
                id=measurement, checkpoint_id=ck, kind="speed", request={}, status="running",
                attempts=1, created_at=db.utcnow(),
            )
        )  # fmt: skip
    r = client.delete(f"/api/checkpoints/{ck}")
    assert r.status_code == 409
    assert "wait for the measurement to finish" in r.json()["detail"]
    r = client.delete(f"/api/searches/{sid}")
    assert r.status_code == 409
    assert f"measurement in progress (checkpoint {ck})" in r.json()["detail"]
    keep_one = settings.model_copy(update={"keep_checkpoints": 1})
    assert housekeeper(keep_one).apply_retention().checkpoints == 0  # measured: kept for now
    set_row(settings, Measurement, measurement, status=JobStatus.SUCCEEDED)
    assert housekeeper(keep_one).apply_retention().checkpoints == 1
    assert count_rows(settings, Measurement) == 0  # deleted with its checkpoint
    assert store_files(settings) == {f"{newer}.tar"}
    assert_consistent(settings)


def test_only_the_owner_or_an_admin_deletes(keyed) -> None:
    c, settings = keyed
    sid, (ck,) = seed_exports(settings, ["succeeded"], owner=hash_key("alice-key"))
    sid2, (ck2,) = seed_exports(settings, ["succeeded"], owner=hash_key("alice-key"))
    for path in (f"/api/checkpoints/{ck}", f"/api/searches/{sid}"):
        assert c.delete(path).status_code == 401
        r = c.delete(path, headers=as_key("bob-key"))
        assert r.status_code == 404, path  # not 403: its existence is not revealed
        assert "not found" in r.json()["detail"]
    assert store_files(settings) == {f"{ck}.tar", f"{ck2}.tar"}
    assert c.delete(f"/api/checkpoints/{ck}", headers=as_key("alice-key")).status_code == 204
    assert c.delete(f"/api/searches/{sid}", headers=as_key("alice-key")).status_code == 204
    assert c.delete(f"/api/searches/{sid2}", headers=as_key("root-key")).status_code == 204
    assert store_files(settings) == set()
    for path in (f"/api/searches/{uuid.uuid4()}", f"/api/checkpoints/{uuid.uuid4()}"):
        assert c.delete(path, headers=as_key("root-key")).status_code == 404
    assert c.delete("/api/searches/not-a-uuid", headers=as_key("root-key")).status_code == 422


def test_a_delete_in_progress_hides_the_rows(client, settings) -> None:
    """Between the two phases the rows are marked: reads answer 404, lists skip them, and
    the export slot of the candidate is free again."""
    sid, (ck,) = seed_exports(settings, ["succeeded"])
    set_row(settings, Checkpoint, ck, deleting_at=db.utcnow())
    assert client.get(f"/api/checkpoints/{ck}").status_code == 404
    assert client.get(f"/api/checkpoints/{ck}/download").status_code == 404
    assert client.get(f"/api/searches/{sid}/checkpoints").json() == []
    assert client.post(f"/api/searches/{sid}/checkpoints").status_code == 202
    set_row(settings, Search, sid, deleting_at=db.utcnow())
    assert client.get(f"/api/searches/{sid}").status_code == 404
    assert client.get("/api/searches").json()["total"] == 0
    assert client.get("/api/genomes").json()["total"] == 0
    assert client.post(f"/api/searches/{sid}/checkpoints").status_code == 404


# -- the sweep --------------------------------------------------------------------------------
def test_sweep_removes_orphans_and_finishes_interrupted_deletes(settings) -> None:
    _sid, (done, failed, running, marked) = seed_exports(
        settings, ["succeeded", "failed", "running", "succeeded"]
    )
    gone_sid, (gone_ck,) = seed_exports(settings, ["succeeded"])
    store = store_dir(settings)
    stranger = uuid.uuid4()
    (store / f"{stranger}.tar").write_bytes(b"no row")  # an id no checkpoint has
    (store / f"{stranger}.compact").write_bytes(b"no row")
    (store / f"{failed}.tar").write_bytes(b"a crashed attempt")  # its export then failed
    (store / f"{running}.tar").write_bytes(b"renamed in, not yet recorded")
    (store / f".{done}.compact.tmp-abc").write_bytes(b"a build killed midway")
    (store / "notes.txt").write_text("not ours")
    (store / ".export-xyz").mkdir()  # a runner's staging folder: service.runner.staging's
    set_row(settings, Checkpoint, marked, deleting_at=db.utcnow())  # a crash after phase 1
    set_row(settings, Search, gone_sid, deleting_at=db.utcnow())
    set_row(settings, Checkpoint, gone_ck, deleting_at=db.utcnow())

    hk = housekeeper(settings)
    with hk.store.compact_lock():  # a build holds the lock: its temporary file stays
        hk.remove_orphans()
        assert (store / f".{done}.compact.tmp-abc").exists()
    report = hk.sweep()
    assert (report.finished.searches, report.finished.checkpoints) == (1, 2)
    assert store_files(settings) == {f"{done}.tar", f"{running}.tar", "notes.txt", ".export-xyz"}
    assert count_rows(settings, Search, Search.id == gone_sid) == 0
    assert count_rows(settings, Checkpoint, Checkpoint.id.in_([marked, gone_ck])) == 0
    assert count_rows(settings, Checkpoint, Checkpoint.id == failed) == 1  # the row stays
    assert report.lost == 0
    set_row(settings, Checkpoint, running, status=JobStatus.SUCCEEDED, file_name=f"{running}.tar")
    assert_consistent(settings)

    # An archive deleted by hand: its row becomes failed, as the API already showed it.
    (store / f"{done}.tar").unlink()
    assert housekeeper(settings).sweep().lost == 1
    with db_sessions(settings)() as session:
        row = session.get_one(Checkpoint, done)
        assert (row.status, row.file_name) == (JobStatus.FAILED, None)
        assert "missing" in (row.error or "")
    assert_consistent(settings)


def test_a_delete_waits_for_an_export_that_got_in(settings, caplog) -> None:
    """Phase 1 refuses active exports; one that still got in (a request racing the mark) is
    cancelled while queued, or waited for while running: the runner finishes the delete after
    the export, as the next sweep would."""
    sid, (queued, running) = seed_exports(settings, ["queued", "running"])
    set_row(settings, Search, sid, deleting_at=db.utcnow())
    hk = housekeeper(settings)
    with caplog.at_level(logging.WARNING, logger="service.housekeeping"):
        assert hk.finish_marked().searches == 0
    assert "an export or measurement is running" in caplog.text
    with db_sessions(settings)() as session:
        assert session.get_one(Checkpoint, queued).status == JobStatus.CANCELLED
    (store_dir(settings) / f"{running}.tar").write_bytes(b"renamed in by the export")
    set_row(settings, Checkpoint, running, status=JobStatus.SUCCEEDED, file_name=f"{running}.tar")
    removed = hk.after_export(running)
    assert removed is not None
    assert (removed.searches, removed.checkpoints, removed.files) == (1, 2, 1)
    assert count_rows(settings, Search) == 0
    assert store_files(settings) == set()


def test_the_api_sweeps_at_start(make_settings) -> None:
    settings = make_settings()
    _sid, (ck,) = seed_exports(settings, ["succeeded"])
    set_row(settings, Checkpoint, ck, deleting_at=db.utcnow())
    orphan = store_dir(settings) / f"{uuid.uuid4()}.tar"
    orphan.write_bytes(b"x")
    with TestClient(create_app(settings)):
        pass
    assert not orphan.exists()
    assert store_files(settings) == set()
    assert count_rows(settings, Checkpoint) == 0


# -- retention ------------------------------------------------------------------------------
def test_retention_keeps_the_newest_n(make_settings, caplog) -> None:
    settings = make_settings(keep_checkpoints=2)
    _sid, ids = seed_exports(settings, ["succeeded"] * 4 + ["failed"])
    age_exports(settings, ids[:4])
    with caplog.at_level(logging.INFO, logger="service.housekeeping"):
        removed = housekeeper(settings).apply_retention()
    assert (removed.checkpoints, removed.files) == (2, 2)
    assert store_files(settings) == {f"{ids[2]}.tar", f"{ids[3]}.tar"}
    assert count_rows(settings, Checkpoint) == 3  # the failed one is no archive: not counted
    for ck in ids[:2]:
        assert f"retention deleted checkpoint {ck}" in caplog.text
    assert "beyond the newest 2" in caplog.text
    assert housekeeper(settings).apply_retention().checkpoints == 0  # nothing more to do
    # The one just exported stays even when it is not the newest by finish time.
    settings1 = settings.model_copy(update={"keep_checkpoints": 1})
    assert housekeeper(settings1).apply_retention(protect={ids[2]}).checkpoints == 0
    assert housekeeper(settings1).apply_retention().checkpoints == 1
    assert store_files(settings) == {f"{ids[3]}.tar"}
    assert_consistent(settings)


def test_retention_size_cap_deletes_the_oldest_first(make_settings, caplog) -> None:
    settings = make_settings()
    _sid, ids = seed_exports(settings, ["succeeded"] * 4)
    age_exports(settings, ids)
    size = (store_dir(settings) / f"{ids[0]}.tar").stat().st_size
    capped = settings.model_copy(update={"store_max_bytes": 2 * size + size // 2})
    assert housekeeper(capped).apply_retention().checkpoints == 2
    assert store_files(settings) == {f"{ids[2]}.tar", f"{ids[3]}.tar"}
    # A cap the newest one alone exceeds: it stays, and the log says so.
    tiny = settings.model_copy(update={"store_max_bytes": 1})
    with caplog.at_level(logging.WARNING, logger="service.housekeeping"):
        assert housekeeper(tiny).apply_retention().checkpoints == 1
    assert store_files(settings) == {f"{ids[3]}.tar"}
    assert "over the 1-byte cap" in caplog.text
    assert_consistent(settings)


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_the_runner_applies_retention_after_an_export(
    make_settings, search_body, thread_runner, poll
) -> None:
    settings = make_settings(keep_checkpoints=1)
    _old_sid, (old,) = seed_exports(settings, ["succeeded"])
    with TestClient(create_app(settings)) as client:
        sid = client.post("/api/searches", json=search_body()).json()["id"]
        with thread_runner(settings):
            assert poll(client, f"/api/searches/{sid}")["status"] == "succeeded"
            assert store_files(settings) == {f"{old}.tar"}  # the runner's start kept the newest
            ck = client.post(f"/api/searches/{sid}/checkpoints").json()
            assert poll(client, f"/api/checkpoints/{ck['id']}")["status"] == "succeeded"
        assert client.get(f"/api/checkpoints/{old}").status_code == 404
        assert store_files(settings) == {f"{ck['id']}.tar"}
        assert client.get("/api/stats").json()["checkpoints"]["succeeded"] == 1
    assert_consistent(settings)


# -- stats ----------------------------------------------------------------------------------
