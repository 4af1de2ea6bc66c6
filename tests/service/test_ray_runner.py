"""A search evaluated on a Ray actor (OPTISHEAR_WORKERS=1) ends with the in-process front."""

from __future__ import annotations

import pytest


@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_search_on_a_ray_worker(client, search_body, make_settings, thread_runner, poll) -> None:
    in_process = client.post("/api/searches", json=search_body()).json()["id"]
    with thread_runner():
        poll(client, f"/api/searches/{in_process}")
    on_ray = client.post("/api/searches", json=search_body(), headers={"Idempotency-Key": "ray"})
    sid = on_ray.json()["id"]
    with thread_runner(make_settings(workers=1)):
        done = poll(client, f"/api/searches/{sid}", timeout=300)
    assert done["status"] == "succeeded", done

    def front(search_id):
        rows = client.get(f"/api/searches/{search_id}/front").json()["candidates"]
        return [(c["key"], round(c["objectives"]["error"], 6)) for c in rows]

    assert front(sid) == front(in_process)

    def baselines(search_id):  # OWL planned on a worker equals OWL planned in process
        rows = client.get(f"/api/searches/{search_id}/front").json()["baselines"]
        return [(b["name"], round(b["objectives"]["error"], 6)) for b in rows]

    assert [name for name, _ in baselines(sid)] == ["Wanda", "OWL+Wanda"]
    assert baselines(sid) == baselines(in_process)
