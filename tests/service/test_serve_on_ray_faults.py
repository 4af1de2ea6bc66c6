"""kill -9 of `optishear serve` while its runner searches on Ray actors: nothing of it outlives
it, and the search resumes to the front of one never interrupted."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest
from serve_process import Serve, alive, gone_within, request_json, until

pytestmark = pytest.mark.slow


def _tagged(tag: str) -> list[int]:
    """The live processes whose environment carries `tag`: a serve, its runner and everything
    they started (Ray's daemons and workers inherit the environment), orphans included."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:  # gone, or not ours to read
            continue
        if f"OPTISHEAR_TEST_TAG={tag}".encode() in environ.split(b"\0") and alive(int(entry.name)):
            found.append(int(entry.name))
    return found


def _front(url: str) -> list[tuple[str, Any, float]]:
    return [(c["key"], c["objectives"], c["sparsity"]) for c in request_json(url)[1]["candidates"]]


@pytest.mark.ray
@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="reads /proc/*/environ")
def test_kill_9_of_serve_mid_search_on_ray_leaves_nothing_and_the_search_resumes(
    tmp_path: Path, tiny_model_dir: Path, search_body
) -> None:
    """kill -9 of `serve` while its runner searches on 2 Ray actors: no runner, Ray daemon or
    actor outlives it, and a new `serve` on the same database finishes the search with the
    front of one that was never interrupted."""
    tag = uuid.uuid4().hex
    ray_env = {"OPTISHEAR_WORKERS": "2", "OPTISHEAR_TEST_TAG": tag}
    body = search_body(generations=5)
    first = Serve(tmp_path, tiny_model_dir, **ray_env)
    try:
        first.ready()
        child = first.runner_pid()
        sid = request_json(first.url("/api/searches"), body)[1]["id"]

        def running() -> bool:
            search = request_json(first.url(f"/api/searches/{sid}"))[1]
            assert search["status"] in ("queued", "running"), search
            return search["status"] == "running" and search["progress"]["generation"] >= 1

        until(running, 180, "the search running on Ray")
        assert len(_tagged(tag)) > 3, "Ray's daemons and actors run beside serve and its runner"
        first.kill()
        gone_within(child, 45)
        until(lambda: not _tagged(tag), 60, "every process of the killed serve gone")
    finally:
        first.stop()
    second = Serve(tmp_path, tiny_model_dir, log="serve-again.log", **ray_env)
    try:
        second.ready()
        again = request_json(second.url("/api/searches"), body)[1]["id"]  # never interrupted
        for search_id in (sid, again):
            until(
                lambda s=search_id: (
                    request_json(second.url(f"/api/searches/{s}"))[1]["status"]
                    in ("succeeded", "failed")
                ),
                300,
                f"search {search_id} finished",
                every=1.0,
            )
        resumed = request_json(second.url(f"/api/searches/{sid}"))[1]
        assert resumed["status"] == "succeeded", resumed
        assert _front(second.url(f"/api/searches/{sid}/front")) == _front(
            second.url(f"/api/searches/{again}/front")
        )
    finally:
        second.stop()
    until(lambda: not _tagged(tag), 60, "every process of the second serve gone")
