"""Keeping the checkpoint store tidy (service.housekeeping): DELETE of searches and checkpoints
(204, 404 for unknown ids and other keys', 409 while queued or running), the disk reclaimed,
retention (newest N, size cap), the sweep (orphans, interrupted deletes, lost archives),
GET /api/stats, the compact download (?format=compact), migration 0008 and `optishear store`.
On SQLite and Postgres."""

from __future__ import annotations

import hashlib
import json
import logging
import tarfile
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa
from alembic import command
from fastapi.testclient import TestClient
from safetensors.numpy import save_file
from sqlalchemy import inspect, select
from store_checks import (
    age_exports,
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

from optishear.artifacts.compact import unpack
from optishear.artifacts.export import write_archive
from service import db
from service.app import create_app
from service.commands import main as service_main
from service.settings import ServiceSettings, get_settings, hash_key
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


KEYS = {"api_keys": "alice-key,bob-key", "admin_keys": "root-key"}


def _as(key: str) -> dict[str, str]:
    return {"X-API-Key": key}


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


@pytest.fixture
def keyed(make_settings):
    settings = make_settings(**KEYS)
    with TestClient(create_app(settings)) as c:
        yield c, settings


def test_only_the_owner_or_an_admin_deletes(keyed) -> None:
    c, settings = keyed
    sid, (ck,) = seed_exports(settings, ["succeeded"], owner=hash_key("alice-key"))
    sid2, (ck2,) = seed_exports(settings, ["succeeded"], owner=hash_key("alice-key"))
    for path in (f"/api/checkpoints/{ck}", f"/api/searches/{sid}"):
        assert c.delete(path).status_code == 401
        r = c.delete(path, headers=_as("bob-key"))
        assert r.status_code == 404, path  # not 403: its existence is not revealed
        assert "not found" in r.json()["detail"]
    assert store_files(settings) == {f"{ck}.tar", f"{ck2}.tar"}
    assert c.delete(f"/api/checkpoints/{ck}", headers=_as("alice-key")).status_code == 204
    assert c.delete(f"/api/searches/{sid}", headers=_as("alice-key")).status_code == 204
    assert c.delete(f"/api/searches/{sid2}", headers=_as("root-key")).status_code == 204
    assert store_files(settings) == set()
    for path in (f"/api/searches/{uuid.uuid4()}", f"/api/checkpoints/{uuid.uuid4()}"):
        assert c.delete(path, headers=_as("root-key")).status_code == 404
    assert c.delete("/api/searches/not-a-uuid", headers=_as("root-key")).status_code == 422


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
def test_stats_count_the_store(client, settings, search_body) -> None:
    _sid, ids = seed_exports(settings, ["succeeded", "succeeded", "failed"])
    client.post("/api/searches", json=search_body())
    store = store_dir(settings)
    sizes = [(store / f"{ck}.tar").stat().st_size for ck in ids[:2]]
    (store / ".export-abc").mkdir()
    (store / ".export-abc" / "archive.tar").write_bytes(b"x" * 1000)
    stats = client.get("/api/stats").json()
    assert stats["scope"] == "all"
    assert stats["searches"] == {"queued": 1, "running": 0, "succeeded": 1, "failed": 0,
                                 "cancelled": 0}  # fmt: skip
    assert stats["checkpoints"]["succeeded"] == 2
    assert stats["checkpoints"]["failed"] == 1
    assert stats["store"] == {
        "recorded_bytes": sum(sizes),
        "disk_bytes": sum(sizes) + 1000,  # the archives and the staging folder
        "archives": 2,
        "compact_archives": 0,
        "staging_bytes": 1000,
    }
    assert stats["retention"] == {"keep_checkpoints": None, "store_max_bytes": None}
    assert client.delete(f"/api/checkpoints/{ids[0]}").status_code == 204
    after = client.get("/api/stats").json()
    assert after["store"]["recorded_bytes"] == sizes[1]
    assert after["store"]["archives"] == 1
    assert after["checkpoints"]["succeeded"] == 1


def test_stats_are_scoped_to_the_key(keyed) -> None:
    c, settings = keyed
    seed_exports(settings, ["succeeded"], owner=hash_key("alice-key"))
    seed_exports(settings, ["succeeded", "succeeded"], owner=hash_key("bob-key"))
    alice = c.get("/api/stats", headers=_as("alice-key")).json()
    root = c.get("/api/stats", headers=_as("root-key")).json()
    assert (alice["scope"], root["scope"]) == ("own", "all")
    assert alice["searches"]["succeeded"] == 1
    assert alice["checkpoints"]["succeeded"] == 1
    assert alice["store"]["archives"] == 1
    assert alice["store"]["staging_bytes"] == 0
    assert root["searches"]["succeeded"] == 2
    assert root["store"]["archives"] == 3
    assert root["store"]["recorded_bytes"] == 3 * alice["store"]["recorded_bytes"]
    assert alice["store"]["disk_bytes"] == alice["store"]["recorded_bytes"]
    assert c.get("/api/stats").status_code == 401


# -- the compact download -----------------------------------------------------------------------
def _real_archive(settings: ServiceSettings, ckpt: uuid.UUID, tmp_path: Path) -> bytes:
    """A real export tar in place of the seeded stand-in: config.json and a pruned
    safetensors file (half its weights exact zeros)."""
    folder = tmp_path / f"src-{ckpt}" / "optishear-0-uniform"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    w = rng.standard_normal((64, 64)).astype(np.float32)
    w[:, ::2] = 0.0
    save_file({"model.layers.0.mlp.up_proj.weight": w, "norm": np.ones(64, np.float32)},
              str(folder / "model.safetensors"))  # fmt: skip
    (folder / "config.json").write_text(json.dumps({"model_type": "llama"}))
    dest = store_dir(settings) / f"{ckpt}.tar"
    digest, size = write_archive(folder, dest)
    set_row(settings, Checkpoint, ckpt, sha256=digest, size_bytes=size)
    return dest.read_bytes()


def _members(tar_bytes: bytes, tmp_path: Path) -> dict[str, bytes]:
    path = tmp_path / "check.tar"
    path.write_bytes(tar_bytes)
    with tarfile.open(path) as tar:
        return {
            m.name.split("/", 1)[1]: tar.extractfile(m).read()
            for m in tar.getmembers()
            if m.isfile()
        }


def test_compact_download_round_trips_to_the_tars_files(client, settings, tmp_path, caplog) -> None:
    _sid, (ck,) = seed_exports(settings, ["succeeded"])
    tar = _real_archive(settings, ck, tmp_path)
    url = f"/api/checkpoints/{ck}/download"
    with caplog.at_level(logging.INFO, logger="service.compacts"):
        r = client.get(url, params={"format": "compact"})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/octet-stream"
    assert f"optishear-{ck}.optishear-compact" in r.headers["content-disposition"]
    data = r.content
    etag = r.headers["ETag"]
    assert etag == f'"{hashlib.sha256(data).hexdigest()}"'
    assert etag != client.head(url).headers["ETag"]  # the tar's
    assert len(data) < len(tar)
    saved = tmp_path / "got.optishear-compact"
    saved.write_bytes(data)
    out = unpack(saved, tmp_path / "restored")
    restored = {
        p.relative_to(out).as_posix(): p.read_bytes() for p in out.rglob("*") if p.is_file()
    }
    assert restored == _members(tar, tmp_path)
    assert caplog.text.count("compact archive built") == 1

    # Kept in the store and recorded: later requests serve it (HEAD, 304, Range) unbuilt.
    head = client.head(url, params={"format": "compact"})
    assert (head.status_code, head.content) == (200, b"")
    assert int(head.headers["Content-Length"]) == len(data)
    assert (
        client.get(url, params={"format": "compact"}, headers={"If-None-Match": etag}).status_code
        == 304
    )
    part = client.get(url, params={"format": "compact"}, headers={"Range": "bytes=10-19"})
    assert (part.status_code, part.content) == (206, data[10:20])
    assert client.get(url, params={"format": "zip"}).status_code == 422
    assert client.get(url).content == tar  # the default is still the tar
    assert caplog.text.count("compact archive built") == 1
    assert store_files(settings) == {f"{ck}.tar", f"{ck}.compact"}
    stats = client.get("/api/stats").json()["store"]
    assert stats["compact_archives"] == 1
    assert stats["recorded_bytes"] == len(tar) + len(data)

    # Deleting the checkpoint takes the compact archive too.
    assert client.delete(f"/api/checkpoints/{ck}").status_code == 204
    assert store_files(settings) == set()
    assert_consistent(settings)


def test_concurrent_compact_requests_build_once(client, settings, tmp_path, caplog) -> None:
    _sid, (ck,) = seed_exports(settings, ["succeeded"])
    _real_archive(settings, ck, tmp_path)
    url = f"/api/checkpoints/{ck}/download?format=compact"
    with caplog.at_level(logging.INFO, logger="service.compacts"), ThreadPoolExecutor(6) as pool:
        answers = list(pool.map(lambda _: client.get(url), range(6)))
    assert {r.status_code for r in answers} == {200}
    assert len({r.content for r in answers}) == 1
    assert caplog.text.count("compact archive built") == 1
    assert not [p for p in store_dir(settings).iterdir() if ".tmp-" in p.name]


def test_a_compact_archive_of_a_deleted_checkpoint_is_not_kept(settings, tmp_path) -> None:
    """A build that finishes after a delete started removes what it built."""
    from service import compacts

    _sid, (ck,) = seed_exports(settings, ["succeeded"])
    _real_archive(settings, ck, tmp_path)
    hk = housekeeper(settings)
    set_row(settings, Checkpoint, ck, deleting_at=db.utcnow())  # the delete's phase 1
    with pytest.raises(compacts.CompactGoneError):
        compacts.ensure_compact(hk.reads, hk.store, ck)
    assert not (store_dir(settings) / f"{ck}.compact").exists()
    hk.finish_marked()
    assert_consistent(settings)


# -- migration 0008 ---------------------------------------------------------------------------
def _housekeeping_migration(url: str) -> None:
    db.upgrade(url, "0007")
    engine = db.make_engine(url)
    try:
        cols = {c["name"] for c in inspect(engine).get_columns("checkpoints")}
        assert "deleting_at" not in cols
        db.upgrade(url)
        command.check(db.alembic_config(url))
        inspector = inspect(engine)
        assert "deleting_at" in {c["name"] for c in inspector.get_columns("searches")}
        assert {"deleting_at", "compact_bytes", "compact_sha256"} <= {
            c["name"] for c in inspector.get_columns("checkpoints")
        }
        # A checkpoint being deleted no longer holds its candidate's one live export.
        sid, cid = uuid.uuid4(), uuid.uuid4()
        now = db.utcnow()
        with engine.begin() as conn:
            conn.execute(
                sa.insert(Search.__table__).values(
                    id=sid, owner="", model="m", request={}, request_hash="h", status="succeeded",
                    total_generations=1, generations_done=1, evaluations=1, elapsed_s=0.0,
                    attempts=1, cancel_requested=False, created_at=now,
                )
            )  # fmt: skip
            conn.execute(
                sa.insert(CandidateRow.__table__).values(
                    id=cid, search_id=sid, generation=None, key="0-u", rank=0, genome={},
                    ratios=[0.5], error=0.1, sparsity=0.5, gap=0.0, meets_target=True,
                    n_samples=1, recommended=True,
                )
            )  # fmt: skip
            for deleting in (now, None):
                conn.execute(
                    sa.insert(Checkpoint.__table__).values(
                        id=uuid.uuid4(), search_id=sid, candidate_id=cid, status="succeeded",
                        attempts=1, created_at=now, deleting_at=deleting,
                    )
                )  # fmt: skip
        with pytest.raises(RuntimeError, match="optishear store sweep"):
            db.downgrade(url, "0007")  # a row still marked would come back as it was
        with engine.begin() as conn:
            conn.execute(sa.delete(Checkpoint.__table__).where(Checkpoint.deleting_at.is_not(None)))
        db.downgrade(url, "0007")
        assert "deleting_at" not in {c["name"] for c in inspect(engine).get_columns("checkpoints")}
        with engine.connect() as conn:  # the row survives the round trip
            assert conn.execute(sa.text("SELECT count(*) FROM checkpoints")).scalar_one() == 1
        db.upgrade(url)
        command.check(db.alembic_config(url))
    finally:
        engine.dispose()


def test_sqlite_housekeeping_migration(tmp_path) -> None:
    _housekeeping_migration(f"sqlite:///{tmp_path / 'm.db'}")


@pytest.mark.postgres
def test_postgres_housekeeping_migration(fresh_pg_url) -> None:
    _housekeeping_migration(fresh_pg_url)


# -- optishear store ----------------------------------------------------------------------------
@pytest.fixture
def store_env(monkeypatch, settings):
    monkeypatch.setenv("OPTISHEAR_DATABASE_URL", settings.resolved_database_url())
    monkeypatch.setenv("OPTISHEAR_CHECKPOINT_DIR", str(settings.checkpoint_dir))
    get_settings.cache_clear()
    yield settings
    get_settings.cache_clear()


def test_store_command_lists_deletes_sweeps_and_measures(store_env, capsys) -> None:
    settings = store_env
    sid, (ck, _ck2) = seed_exports(settings, ["succeeded", "succeeded"])
    other_sid, (other,) = seed_exports(settings, ["succeeded"])
    size = (store_dir(settings) / f"{ck}.tar").stat().st_size

    assert service_main(["store", "list"]) == 0
    out = capsys.readouterr().out
    assert f"search {sid}  succeeded" in out
    assert f"checkpoint {ck}  succeeded  {size / 1e6:.1f} MB" in out
    assert "2 searches, 3 checkpoints" in out

    assert service_main(["store", "delete-checkpoint", str(ck)]) == 0
    assert f"deleted checkpoint {ck}: 1 checkpoint, 1 file, " in capsys.readouterr().out
    assert not (store_dir(settings) / f"{ck}.tar").exists()
    assert service_main(["store", "delete-search", str(sid)]) == 0
    assert f"deleted search {sid}: 1 checkpoint, 1 file" in capsys.readouterr().out
    assert store_files(settings) == {f"{other}.tar"}

    # Unknown ids, bad ids and running jobs: one line on stderr, exit 2, nothing deleted.
    set_row(settings, Checkpoint, other, status=JobStatus.RUNNING)
    for argv, message in (
        (["delete-search", str(sid)], f"search {sid} not found"),
        (["delete-checkpoint", str(uuid.uuid4())], "not found"),
        (["delete-checkpoint", "nope"], "'nope' is not a checkpoint id"),
        (["delete-checkpoint", str(other)], "wait for the export to finish"),
        (["delete-search", str(other_sid)], "export in progress"),
    ):
        assert service_main(["store", *argv]) == 2, argv
        captured = capsys.readouterr()
        assert message in captured.err, captured.err
        assert "Traceback" not in captured.err
    assert store_files(settings) == {f"{other}.tar"}
    set_row(settings, Checkpoint, other, status=JobStatus.SUCCEEDED)

    orphan = store_dir(settings) / f"{uuid.uuid4()}.tar"
    orphan.write_bytes(b"x" * 10)
    assert service_main(["store", "sweep"]) == 0
    assert "orphan files removed: 1" in capsys.readouterr().out
    assert not orphan.exists()

    assert service_main(["store", "stats", "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["store"]["archives"] == 1
    assert stats["searches"]["succeeded"] == 1
    assert service_main(["store", "stats"]) == 0
    text = capsys.readouterr().out
    assert "retention    off" in text
    assert "checkpoints  queued 0, running 0, succeeded 1" in text
