"""What the store holds and how it is downloaded: GET /api/stats, scoped by key, and the compact
download (?format=compact), built once and never kept for a deleted checkpoint. On SQLite and
Postgres."""

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
from safetensors.numpy import save_file
from store_checks import (
    as_key,
    assert_consistent,
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
from service.settings import ServiceSettings, hash_key
from service.tables import (
    Checkpoint,
)


@pytest.fixture(autouse=True)
def _engines():
    yield
    dispose_engines()


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
    alice = c.get("/api/stats", headers=as_key("alice-key")).json()
    root = c.get("/api/stats", headers=as_key("root-key")).json()
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
