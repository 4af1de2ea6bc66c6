"""Measurements of an exported checkpoint through the API: downstream tasks (the offline
local lm-eval task shipped in tests/data) and speed against the dense model, run by a real
runner on SQLite and Postgres."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from service.app import create_app

TASKS = Path(__file__).resolve().parents[1] / "data" / "lm_eval_tasks"

pytestmark = pytest.mark.slow


@pytest.fixture
def settings(make_settings):
    return make_settings(task_path=TASKS, measure_device="cpu")


def _export(client, search_body, poll) -> dict:
    sid = client.post("/api/searches", json=search_body()).json()["id"]
    poll(client, f"/api/searches/{sid}")
    ck = client.post(f"/api/searches/{sid}/checkpoints", json={}).json()
    return poll(client, f"/api/checkpoints/{ck['id']}")


def test_tasks_and_speed_of_an_export(client, search_body, thread_runner, poll) -> None:
    with thread_runner():
        ck = _export(client, search_body, poll)
        assert ck["status"] == "succeeded", ck
        url = f"/api/checkpoints/{ck['id']}/measurements"
        tasks = client.post(url, json={"kind": "tasks", "tasks": ["optishear_cloze"], "limit": 8})
        assert tasks.status_code == 202, tasks.text
        assert tasks.json()["status"] == "queued"
        speed = client.post(
            url,
            json={"kind": "speed", "batch_sizes": [1, 2], "prompt_len": 8, "decode_tokens": 4,
                  "repeats": 1},
        )  # fmt: skip
        assert speed.status_code == 202, speed.text
        unknown = client.post(url, json={"kind": "tasks", "tasks": ["no_such_task_here"]})
        done = {
            name: poll(client, f"/api/measurements/{r.json()['id']}", timeout=300)
            for name, r in (("tasks", tasks), ("speed", speed), ("unknown", unknown))
        }

    t = done["tasks"]
    assert t["status"] == "succeeded", t
    scores = {(s["task"], s["metric"]): s for s in t["result"]["scores"]}
    acc = scores[("optishear_cloze", "acc")]
    assert 0.0 <= acc["value"] <= 1.0
    assert acc["n_samples"] == 8

    s = done["speed"]
    assert s["status"] == "succeeded", s
    rows = s["result"]["rows"]
    assert {(r["variant"], r["batch_size"]) for r in rows} == {
        (v, b) for v in ("dense", "pruned") for b in (1, 2)
    }
    assert all(r["decode_tokens_per_s"] > 0 and r["prefill_ms"] > 0 for r in rows)
    assert "no sparse kernel" in s["result"]["kernel_note"]  # unstructured, on a CPU

    # An unknown task fails the job with the library's message, not a crash.
    u = done["unknown"]
    assert u["status"] == "failed"
    assert "no_such_task_here" in u["error"]
    assert "Traceback" not in u["error"]

    listed = client.get(f"/api/checkpoints/{ck['id']}/measurements").json()
    assert [m["id"] for m in listed] == [done[k]["id"] for k in ("tasks", "speed", "unknown")]


def test_bad_measurement_requests_are_4xx(client, search_body, thread_runner, poll) -> None:
    missing = uuid.uuid4()
    r = client.post(f"/api/checkpoints/{missing}/measurements", json={"kind": "speed"})
    assert r.status_code == 404
    assert client.get(f"/api/measurements/{missing}").status_code == 404

    sid = client.post("/api/searches", json=search_body()).json()["id"]
    with thread_runner():
        poll(client, f"/api/searches/{sid}")
    # no runner now: the export stays queued, and a queued export cannot be measured yet
    ck = client.post(f"/api/searches/{sid}/checkpoints", json={}).json()
    url = f"/api/checkpoints/{ck['id']}/measurements"
    r = client.post(url, json={"kind": "speed"})
    assert r.status_code == 409
    assert "only a succeeded export can be measured" in r.json()["detail"]
    bad = [
        {"kind": "tasks", "tasks": []},
        {"kind": "tasks", "tasks": ["../../etc/passwd"]},
        {"kind": "speed", "batch_sizes": [0]},
        {"kind": "profile"},
        {"kind": "speed", "prompt_len": 1, "extra": 1},
        {"tasks": ["arc_easy"]},
    ]
    for body in bad:
        r = client.post(url, json=body)
        assert r.status_code == 422, (body, r.text)
        assert r.json()["detail"]
    assert client.get(url).json() == []


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_other_keys_do_not_see_measurements(make_settings, search_body, thread_runner, poll):
    settings = make_settings(api_keys=("alice", "bob"), task_path=TASKS)
    alice = TestClient(create_app(settings), headers={"X-API-Key": "alice"})
    bob = TestClient(create_app(settings), headers={"X-API-Key": "bob"})
    with alice, bob, thread_runner(settings):
        ck = _export(alice, search_body, poll)
        url = f"/api/checkpoints/{ck['id']}/measurements"
        m = alice.post(url, json={"kind": "tasks", "tasks": ["optishear_cloze"], "limit": 2})
        assert m.status_code == 202
        assert bob.post(url, json={"kind": "speed"}).status_code == 404
        assert bob.get(url).status_code == 404
        assert bob.get(f"/api/measurements/{m.json()['id']}").status_code == 404
        assert alice.get(f"/api/measurements/{m.json()['id']}").status_code == 200
        poll(alice, f"/api/measurements/{m.json()['id']}", timeout=300)
