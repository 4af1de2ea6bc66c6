"""Issue 15's attacks on the API, each a test: paths, N:M shapes, auth before parsing, owners,
scoped and expiring idempotency keys, one export per candidate, the store, downloads
(HEAD, 304, 206, 416, 410), 503 with Retry-After, and the documented error contract."""

from __future__ import annotations

import hashlib
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest
from fastapi.testclient import TestClient
from seeding import seed_front_search
from sqlalchemy import func, select

from optishear.core.genome import Genome
from optishear.recipe.candidates import Candidate, Evaluation, Scored
from service import db
from service.app import create_app
from service.settings import ServiceSettings, hash_key
from service.tables import Checkpoint, JobStatus


def _front(n: int = 2) -> list[Scored]:
    return [
        Scored(
            Candidate(Genome.from_index(i), (0.5, 0.5)),
            Evaluation(0.1 * (i + 1), 0.5, 4, 0.1),
            gap=0.0,
        )
        for i in range(n)
    ]


def _succeeded(settings: ServiceSettings, *, owner: str = "", exported: bool = True):
    """A succeeded search (and, with `exported`, an export of its first candidate whose
    archive is in the store); returns (search id, front rows, checkpoint id or None)."""
    sid, rows = seed_front_search(
        settings,
        _front(),
        owner=owner,
        checkpoints=[(0, JobStatus.SUCCEEDED, 50.0, 0.5)] if exported else (),
    )
    if not exported:
        return sid, rows, None
    engine = db.make_engine(settings.resolved_database_url())
    with db.make_sessions(engine)() as session:
        ckpt = session.scalars(select(Checkpoint.id).where(Checkpoint.search_id == sid)).one()
    engine.dispose()
    return sid, rows, ckpt


# -- paths --------------------------------------------------------------------------------
@pytest.mark.parametrize("field", ["model", "calibration", "evaluation"])
def test_an_unknown_tilde_user_is_422_not_500(client, search_body, field) -> None:
    path = "~nosuchuser-optishear/x"
    r = client.post("/api/searches", json=_naming(search_body, field, path))
    assert r.status_code == 422, r.text
    assert path in r.json()["detail"]


@pytest.mark.parametrize(
    ("field", "path"),
    [
        ("calibration", "/etc/passwd"),
        ("calibration", "/proc/self/environ"),
        ("calibration", "/etc/no-such-file-here"),
        ("evaluation", "/etc/hostname"),
        ("model", "/etc"),
        ("model", "/no/such/folder"),
    ],
)
def test_server_paths_outside_the_data_roots_are_refused_alike(
    client, search_body, field, path
) -> None:
    r = client.post("/api/searches", json=_naming(search_body, field, path))
    assert r.status_code == 422, r.text
    detail = r.json()["detail"]
    assert "data folders" in detail
    # The same words whether the path exists or not: no oracle for the server's files.
    assert detail.replace(path, "PATH") == _refusal(client, search_body, field)


def _refusal(client, search_body, field) -> str:
    other = "/nonexistent-optishear-probe"
    body = _naming(search_body, field, other)
    return client.post("/api/searches", json=body).json()["detail"].replace(other, "PATH")


def _naming(search_body, field: str, path: str) -> dict:
    """A search body whose model, calibration text or evaluation text is `path`."""
    if field == "model":
        return search_body(model=path)
    if field == "calibration":
        return search_body(calibration={"source": path})
    return search_body(evaluation={"text": path})


def test_a_link_out_of_the_roots_is_refused(client, search_body, tmp_path) -> None:
    link = tmp_path / "passwd.txt"
    link.symlink_to("/etc/passwd")
    r = client.post("/api/searches", json=search_body(calibration={"source": str(link)}))
    assert r.status_code == 422
    assert "data folders" in r.json()["detail"]


def test_configured_roots_admit_their_files(make_settings, search_body, tiny_model_dir) -> None:
    settings = make_settings(data_roots=(tiny_model_dir,))  # only the tiny folder
    with TestClient(create_app(settings)) as c:
        assert c.post("/api/searches", json=search_body()).status_code == 201


@pytest.mark.parametrize("pattern", ["3:7", "5:12"])
def test_an_n_m_pattern_that_does_not_divide_the_layers_is_refused_at_submit(
    client, search_body, pattern
) -> None:
    n, m = (int(x) for x in pattern.split(":"))
    r = client.post("/api/searches", json=search_body(pattern=pattern, sparsity=n / m))
    assert r.status_code == 422, r.text
    assert f"not a multiple of {m}" in r.json()["detail"]
    assert client.get("/api/searches").json()["total"] == 0


def test_a_dividing_n_m_pattern_is_accepted(client, search_body) -> None:
    assert client.post("/api/searches", json=search_body(pattern="2:4")).status_code == 201


# -- auth and owners ----------------------------------------------------------------------
KEYS = {"api_keys": "alice-key,bob-key", "admin_keys": "root-key"}


def _as(key: str) -> dict[str, str]:
    return {"X-API-Key": key}


@pytest.fixture
def keyed(make_settings):
    settings = make_settings(**KEYS)
    with TestClient(create_app(settings)) as c:
        yield c, settings


def test_auth_comes_before_parsing(keyed) -> None:
    c, _ = keyed
    broken = b'{"model": "smollm2-135m", '
    headers = {"Content-Type": "application/json"}
    r = c.post("/api/searches", content=broken, headers=headers)
    assert r.status_code == 401
    assert r.headers["WWW-Authenticate"] == "Bearer"
    assert c.post("/api/searches", content=broken, headers=headers | _as("nope")).status_code == 401
    assert (
        c.post("/api/searches", content=broken, headers=headers | _as("alice-key")).status_code
        == 422
    )
    bearer = {"Authorization": "Bearer alice-key"}
    assert c.post("/api/searches", content=broken, headers=headers | bearer).status_code == 422
    # Health and the dashboard stay open: probes and the login form need no key.
    assert c.get("/healthz").status_code == 200


def test_a_search_belongs_to_its_key_and_an_admin_sees_all(keyed, search_body) -> None:
    c, settings = keyed
    mine = c.post("/api/searches", json=search_body(), headers=_as("alice-key")).json()["id"]
    sid, _, ckpt = _succeeded(settings, owner=hash_key("alice-key"))
    for path in (
        f"/api/searches/{mine}",
        f"/api/searches/{sid}/front",
        f"/api/searches/{sid}/candidates",
        f"/api/searches/{sid}/generations",
        f"/api/searches/{sid}/checkpoints",
        f"/api/checkpoints/{ckpt}",
        f"/api/checkpoints/{ckpt}/download",
    ):
        assert c.get(path, headers=_as("alice-key")).status_code == 200, path
        assert c.get(path, headers=_as("root-key")).status_code == 200, path
        other = c.get(path, headers=_as("bob-key"))
        assert other.status_code == 404, path  # not 403: its existence is not revealed
    assert c.post(f"/api/searches/{mine}/cancel", headers=_as("bob-key")).status_code == 404
    assert c.post(f"/api/searches/{sid}/checkpoints", headers=_as("bob-key")).status_code == 404
    assert c.get("/api/searches", headers=_as("bob-key")).json()["total"] == 0
    assert c.get("/api/searches", headers=_as("alice-key")).json()["total"] == 2
    assert c.get("/api/searches", headers=_as("root-key")).json()["total"] == 2
    assert c.get("/api/genomes", headers=_as("bob-key")).json()["total"] == 0
    assert c.get("/api/genomes", headers=_as("alice-key")).json()["total"] > 0
    # Another key's search cannot lend its genomes either.
    seeded = search_body(metric_from={"search": str(sid)})
    r = c.post("/api/searches", json=seeded, headers=_as("bob-key"))
    assert r.status_code == 422
    assert f"no search {sid}" in r.json()["detail"]
    assert c.post("/api/searches", json=seeded, headers=_as("alice-key")).status_code == 201
    assert c.post(f"/api/searches/{mine}/cancel", headers=_as("alice-key")).status_code == 202


def test_open_mode_sees_everything(client, settings, search_body) -> None:
    sid, _, _ = _succeeded(settings, owner=hash_key("someone"), exported=False)
    assert client.get(f"/api/searches/{sid}").status_code == 200
    assert client.get("/api/searches").json()["total"] == 1


def test_idempotency_keys_are_scoped_per_api_key(keyed, search_body) -> None:
    c, _ = keyed
    same = {"Idempotency-Key": "retry-1"}
    a = c.post("/api/searches", json=search_body(), headers=same | _as("alice-key"))
    b = c.post("/api/searches", json=search_body(), headers=same | _as("bob-key"))
    assert (a.status_code, b.status_code) == (201, 201)
    assert a.json()["id"] != b.json()["id"]
    again = c.post("/api/searches", json=search_body(), headers=same | _as("alice-key"))
    assert (again.status_code, again.json()["id"]) == (200, a.json()["id"])
    # Bob's other body under the key Alice used is no conflict of Alice's.
    other = search_body(population=6)
    assert c.post("/api/searches", json=other, headers=same | _as("bob-key")).status_code == 422


def test_idempotency_keys_expire(make_settings, search_body) -> None:
    import time

    settings = make_settings(idempotency_ttl_seconds=0.5)
    with TestClient(create_app(settings)) as c:
        key = {"Idempotency-Key": "k"}
        first = c.post("/api/searches", json=search_body(), headers=key).json()["id"]
        assert c.post("/api/searches", json=search_body(), headers=key).json()["id"] == first
        time.sleep(0.8)
        later = c.post("/api/searches", json=search_body(population=6), headers=key)
        assert later.status_code == 201  # a new search: the key was released, no conflict
        assert later.json()["id"] != first
        assert c.get(f"/api/searches/{first}").status_code == 200  # the first one stays


# -- checkpoints and downloads ------------------------------------------------------------
def test_concurrent_export_requests_make_one_checkpoint(client, settings) -> None:
    sid, _, _ = _succeeded(settings, exported=False)
    url = f"/api/searches/{sid}/checkpoints"
    with ThreadPoolExecutor(max_workers=10) as pool:
        answers = list(pool.map(lambda _: client.post(url, json={}), range(30)))
    assert {r.status_code for r in answers} <= {200, 202}
    assert len({r.json()["id"] for r in answers}) == 1
    engine = db.make_engine(settings.resolved_database_url())
    with db.make_sessions(engine)() as session:
        assert session.scalar(select(func.count()).select_from(Checkpoint)) == 1
    engine.dispose()


def test_download_head_etag_and_ranges(client, settings) -> None:
    _, _, ckpt = _succeeded(settings)
    url = f"/api/checkpoints/{ckpt}/download"
    full = client.get(url)
    assert full.status_code == 200
    data = full.content
    etag = full.headers["ETag"]
    assert etag == f'"{hashlib.sha256(data).hexdigest()}"'

    head = client.head(url)
    assert head.status_code == 200
    assert head.content == b""
    assert int(head.headers["Content-Length"]) == len(data)
    assert head.headers["ETag"] == etag

    assert client.get(url, headers={"If-None-Match": etag}).status_code == 304
    assert client.get(url, headers={"If-None-Match": f'W/{etag}, "x"'}).status_code == 304
    assert client.get(url, headers={"If-None-Match": '"other"'}).status_code == 200

    part = client.get(url, headers={"Range": "bytes=100-199"})
    assert part.status_code == 206
    assert part.content == data[100:200]
    backwards = client.get(url, headers={"Range": "bytes=100-10"})
    assert backwards.status_code == 416
    assert backwards.headers["Content-Range"] == f"bytes */{len(data)}"
    assert client.get(url, headers={"Range": f"bytes={len(data)}-"}).status_code == 416
    unparsable = client.get(url, headers={"Range": "pages=1-2"})
    assert (unparsable.status_code, unparsable.content) == (200, data)


def test_a_deleted_archive_is_not_offered(client, settings) -> None:
    sid, rows, ckpt = _succeeded(settings)
    (settings.resolved_checkpoint_dir() / f"{ckpt}.tar").unlink()
    shown = client.get(f"/api/checkpoints/{ckpt}").json()
    assert shown["status"] == "failed"
    assert shown["download_url"] is None
    assert "missing" in shown["error"]
    assert client.get(f"/api/checkpoints/{ckpt}/download").status_code == 410
    # Asking again queues a new export of that candidate.
    again = client.post(f"/api/searches/{sid}/checkpoints", json={"candidate_id": str(rows[0].id)})
    assert again.status_code == 202
    assert again.json()["id"] != str(ckpt)


def test_a_broken_store_is_a_503_and_readyz_says_so(make_settings, tmp_path) -> None:
    store = tmp_path / "not-a-folder"
    store.write_text("x")
    settings = make_settings(checkpoint_dir=store)
    with TestClient(create_app(settings)) as c:
        sid, _, _ = _succeeded(settings.model_copy(update={"checkpoint_dir": tmp_path / "ok"}))
        r = c.post(f"/api/searches/{sid}/checkpoints")
        assert r.status_code == 503
        assert r.headers["Retry-After"].isdigit()
        assert str(store) not in r.text  # the server's layout stays in its log
        ready = c.get("/readyz")
        assert ready.status_code == 503
        assert ready.json()["checks"]["checkpoint_store"] == "not a writable folder"
        assert "Retry-After" in ready.headers


def test_a_database_outage_is_a_503_with_retry_after(tmp_path) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens there once closed
    settings = ServiceSettings(
        database_url=f"postgresql+psycopg://postgres@127.0.0.1:{port}/none",
        checkpoint_dir=tmp_path / "c",
    )
    with TestClient(create_app(settings, migrate=False)) as c:
        r = c.get("/api/searches")
        assert r.status_code == 503
        assert r.headers["Retry-After"].isdigit()
        assert r.json() == {"detail": "the database is unavailable; retry later"}


# -- the documented contract --------------------------------------------------------------
@pytest.mark.parametrize("keys", [(), ("a-key",)], ids=["open", "keys"])
def test_openapi_documents_the_errors_we_send(make_settings, keys) -> None:
    with TestClient(create_app(make_settings(api_keys=keys))) as client:
        _documents_errors(client, secured=bool(keys))


def _documents_errors(client: TestClient, *, secured: bool) -> None:
    headers = {"X-API-Key": "a-key"} if secured else {}
    doc = client.get("/openapi.json").json()
    assert ("securitySchemes" in doc["components"]) == secured
    schemas = doc["components"]["schemas"]
    assert "HTTPValidationError" not in schemas
    assert set(schemas["ValidationProblem"]["properties"]) == {"detail", "errors"}
    for path, item in doc["paths"].items():
        if not path.startswith("/api"):
            continue
        for method, op in item.items():
            codes = set(op["responses"])
            assert "503" in codes, (method, path)
            assert ("401" in codes) == secured, (method, path)
            assert ("security" in op) == secured, (method, path)
            assert "Retry-After" in op["responses"]["503"]["headers"]
            if "422" in codes:
                ref = op["responses"]["422"]["content"]["application/json"]["schema"]["$ref"]
                assert ref.endswith("/ValidationProblem"), (method, path)
            if "requestBody" in op:
                assert {"400", "413", "422"} <= codes, (method, path)
    # The search's id leads to the operations on it.
    created = doc["paths"]["/api/searches"]["post"]["responses"]["201"]["links"]
    assert {link["parameters"]["search_id"] for link in created.values()} == {"$response.body#/id"}
    assert len(created) >= 7
    # And a real 422 has that shape.
    r = client.post("/api/searches", json={"model": 5}, headers=headers)
    assert r.status_code == 422
    assert isinstance(r.json()["detail"], str)
    assert r.json()["errors"][0]["loc"][0] == "body"
    # A 405 names every method the path has, across its routes.
    r = client.delete(f"/api/searches/{uuid.uuid4()}/checkpoints", headers=headers)
    assert r.status_code == 405
    assert set(r.headers["Allow"].split(", ")) >= {"GET", "POST"}
