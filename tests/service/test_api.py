"""API behaviour without running searches: validation, idempotency, listing, cancel, auth, limits."""

from __future__ import annotations

import uuid

import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.settings import hash_key


def test_submit_returns_201_queued_with_progress(client, search_body) -> None:
    r = client.post("/api/searches", json=search_body())
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["status"] == "queued"
    assert body["progress"] == {
        "generation": 0,
        "total_generations": 2,
        "evaluations": 0,
        "best_error": None,
        "elapsed_s": 0.0,
        "eta_s": None,
        "activity": None,
    }
    assert client.get(f"/api/searches/{body['id']}").json()["id"] == body["id"]


@pytest.mark.parametrize(
    ("override", "fragment"),
    [
        ({"model": "no-such-model"}, "smollm2-135m"),
        ({"model": "/no/such/folder"}, "smollm2-135m"),
        ({"pattern": "3:2"}, "N:M"),
        ({"pattern": "2:0"}, "0 < N < M"),  # not taken for unstructured
        ({"pattern": "0:4"}, "0 < N < M"),
        ({"pattern": "2:4", "sparsity": 0.7}, "2:4"),
        ({"pattern": "2:4", "stages": "layerwise"}, "only the metric"),
        ({"sparsity": 1.5}, "sparsity"),
        ({"population": 2}, "population"),
        ({"calibration": {"source": "/missing.txt"}}, "calibration text"),
        ({"unknown_field": 1}, "unknown_field"),
        ({"model": "a\x00b"}, "model"),
    ],
)
def test_bad_submissions_give_422_with_a_message(client, search_body, override, fragment) -> None:
    r = client.post("/api/searches", json=search_body(**override))
    assert r.status_code == 422, r.text
    assert fragment in r.json()["detail"]


@pytest.mark.parametrize(
    ("model", "width"),
    [("smollm2-135m", "hidden_size = 576"), ("qwen2.5-0.5b", "intermediate_size = 4864")],
)
def test_a_pattern_is_checked_against_a_registered_model_not_pulled_yet(
    client, search_body, monkeypatch, tmp_path, model, width
) -> None:
    # an empty cache: the model's config.json is not on disk, its registered widths are
    monkeypatch.setenv("OPTISHEAR_CACHE", str(tmp_path / "empty-cache"))
    body = search_body(model=model, calibration={"n_samples": 4, "seq_len": 16})
    body.pop("evaluation")
    r = client.post("/api/searches", json={**body, "pattern": "3:7"})
    assert r.status_code == 422, r.text
    assert f"3:7 does not divide layer inputs ({width})" in r.json()["detail"]
    r = client.post("/api/searches", json={**body, "pattern": "2:4"})
    assert r.status_code == 201, r.text


def test_malformed_json_and_wrong_types_are_4xx_json(client) -> None:
    r = client.post(
        "/api/searches", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert r.status_code == 422
    assert "detail" in r.json()
    r = client.post("/api/searches", json=[1, 2])
    assert r.status_code == 422


def test_unknown_ids_give_404(client) -> None:
    missing = uuid.uuid4()
    for url in (
        f"/api/searches/{missing}",
        f"/api/searches/{missing}/front",
        f"/api/searches/{missing}/generations",
        f"/api/searches/{missing}/checkpoints",
        f"/api/checkpoints/{missing}",
        f"/api/checkpoints/{missing}/download",
    ):
        r = client.get(url)
        assert r.status_code == 404, url
        assert str(missing) in r.json()["detail"]
    assert client.post(f"/api/searches/{missing}/cancel").status_code == 404
    assert client.get("/api/searches/not-a-uuid").status_code == 422


def test_idempotency_key_makes_one_search(client, search_body) -> None:
    headers = {"Idempotency-Key": "retry-me-123"}
    first = client.post("/api/searches", json=search_body(), headers=headers)
    again = client.post("/api/searches", json=search_body(), headers=headers)
    assert first.status_code == 201
    assert again.status_code == 200
    assert again.json()["id"] == first.json()["id"]
    assert client.get("/api/searches").json()["total"] == 1
    other = client.post("/api/searches", json=search_body(seed=7), headers=headers)
    assert other.status_code == 422
    assert "Idempotency-Key" in other.json()["detail"]
    assert client.post("/api/searches", json=search_body()).json()["id"] != first.json()["id"]


def test_list_filters_by_status_and_paginates(client, search_body) -> None:
    ids = [client.post("/api/searches", json=search_body(seed=i)).json()["id"] for i in range(3)]
    client.post(f"/api/searches/{ids[0]}/cancel")
    page = client.get("/api/searches", params={"limit": 2}).json()
    assert page["total"] == 3
    assert len(page["items"]) == 2
    rest = client.get("/api/searches", params={"limit": 2, "offset": 2}).json()
    assert {i["id"] for i in page["items"] + rest["items"]} == set(ids)
    cancelled = client.get("/api/searches", params={"status": "cancelled"}).json()
    assert [i["id"] for i in cancelled["items"]] == [ids[0]]
    assert client.get("/api/searches", params={"status": "bogus"}).status_code == 422
    assert client.get("/api/searches", params={"limit": 0}).status_code == 422


def test_cancel_queued_then_409(client, search_body) -> None:
    sid = client.post("/api/searches", json=search_body()).json()["id"]
    r = client.post(f"/api/searches/{sid}/cancel")
    assert r.status_code == 202
    assert r.json()["status"] == "cancelled"
    r = client.post(f"/api/searches/{sid}/cancel")
    assert r.status_code == 409
    assert "finished" in r.json()["detail"]
    r = client.post(f"/api/searches/{sid}/checkpoints")
    assert r.status_code == 409


def test_oversized_body_gives_413(make_settings, search_body) -> None:
    with TestClient(create_app(make_settings(max_body_bytes=2048))) as c:
        big = search_body(model="x" * 5000)
        r = c.post("/api/searches", json=big)
        assert r.status_code == 413
        assert "larger" in r.json()["detail"]

        def chunks():
            yield b'{"model": "'
            yield b"y" * 4096
            yield b'"}'

        r = c.post("/api/searches", content=chunks(), headers={"content-type": "application/json"})
        assert r.status_code == 413


def test_auth_on_requires_a_key(make_settings, search_body) -> None:
    settings = make_settings(api_keys="alpha-key, sha256:" + hash_key("beta-key"))
    assert "alpha-key" not in settings.api_keys  # only digests are kept
    with TestClient(create_app(settings)) as c:
        assert c.get("/api/models").status_code == 401
        assert c.get("/api/models", headers={"X-API-Key": "wrong"}).status_code == 401
        assert c.get("/api/models", headers={"X-API-Key": "alpha-key"}).status_code == 200
        ok = c.get("/api/models", headers={"Authorization": "Bearer beta-key"})
        assert ok.status_code == 200
        r = c.post("/api/searches", json=search_body())
        assert r.status_code == 401
        assert "API key" in r.json()["detail"]
        assert c.get("/healthz").status_code == 200  # probes stay open


def test_auth_off_is_open(client) -> None:
    assert client.get("/api/models").status_code == 200


def test_open_api_logs_a_warning(settings, caplog) -> None:
    with caplog.at_level("WARNING"), TestClient(create_app(settings)):
        pass
    assert "OPTISHEAR_API_KEYS" in caplog.text


def test_models_health_and_readiness(client, thread_runner) -> None:
    models = client.get("/api/models").json()
    assert [m["name"] for m in models] == ["smollm2-135m", "qwen2.5-0.5b"]
    assert all(isinstance(m["cached"], bool) and m["description"] for m in models)
    assert client.get("/healthz").json()["status"] == "ok"
    r = client.get("/readyz")
    assert r.status_code == 503  # no runner yet
    assert r.json()["checks"]["database"] == "ok"
    with thread_runner():
        ready = None
        for _ in range(50):
            ready = client.get("/readyz")
            if ready.status_code == 200:
                break
        assert ready is not None
        assert ready.status_code == 200, ready.text
