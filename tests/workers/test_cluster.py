"""Ray workers on a real two-node Ray cluster started on this machine with `ray start`.

The head (2 CPUs) and a second node (1 CPU, its own ports and custom resource) run as
separate `ray start` process trees, each in its own session, so that teardown kills exactly
their processes, never another Ray on this machine (no `ray stop`). Search drivers run as
subprocesses with RAY_AUTH_MODE=disabled, like the cluster: this test process may have
imported Ray with another auth mode, and Ray fixes the mode at import.

The driver is tests/cluster_driver.py, run as a script; the nodes, tests/ray_nodes.py.
"""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cluster_driver
import pytest
from cluster_driver import HOLDING
from ray_nodes import Cluster, Node, free_port, kill_sessions, ray_start

pytestmark = pytest.mark.ray
logger = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- the cluster


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    # A short folder: Ray's Unix sockets live under it (107 bytes at most).
    temp = Path(tempfile.mkdtemp(prefix="osr-", dir="/tmp"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env |= {"RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0", "RAY_DEDUP_LOGS": "0"}
    # The GCS marks a node dead after 5 failed health checks; 1 s apart, not 3 s (Ray's
    # default), so that the lost actor's restart elsewhere is not waited for as long.
    env |= {"RAY_health_check_period_ms": "1000"}
    gcs = free_port()
    # Ports that default to fixed numbers, or that two nodes on one host must not share.
    common = [f"--temp-dir={temp}", "--disable-usage-stats"]
    base = random.randrange(20000, 30000, 200)
    started: list[Node] = []
    try:
        head = ray_start(
            [
                "--head",
                f"--port={gcs}",
                "--include-dashboard=false",
                "--num-cpus=2",
                '--resources={"osr_head": 1}',
                f"--ray-client-server-port={free_port()}",
                f"--dashboard-port={free_port()}",
                f"--dashboard-agent-listen-port={free_port()}",
                f"--object-manager-port={free_port()}",
                f"--min-worker-port={base}",
                f"--max-worker-port={base + 99}",
                *common,
            ],
            env,
            free_port(),
        )
        started.append(head)
        second = ray_start(
            [
                f"--address=127.0.0.1:{gcs}",
                "--num-cpus=1",
                '--resources={"osr_second": 1}',
                f"--dashboard-agent-listen-port={free_port()}",
                f"--object-manager-port={free_port()}",
                f"--min-worker-port={base + 100}",
                f"--max-worker-port={base + 199}",
                *common,
            ],
            env,
            free_port(),
        )
        started.append(second)
        yield Cluster(f"127.0.0.1:{gcs}", head, second, env)
    finally:
        kill_sessions({n.session for n in started})
        shutil.rmtree(temp, ignore_errors=True)


@pytest.fixture(scope="module")
def model_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tiny_models import build_tiny, tiny_tokenizer, word_text

    root = tmp_path_factory.mktemp("cluster-tiny")
    build_tiny("llama", layers=4).save_pretrained(root / "model")
    tiny_tokenizer().save_pretrained(root / "model")
    (root / "calib.txt").write_text(word_text(3000, seed=1))
    return root


def _driver(cluster: Cluster, model_root: Path, out: Path, victim: str | None) -> subprocess.Popen:
    out.parent.mkdir(parents=True, exist_ok=True)
    args = [
        sys.executable,
        cluster_driver.__file__,
        cluster.address,
        str(model_root),
        str(out),
        victim or "",
    ]
    with (out.parent / "driver.log").open("w") as log:  # the child keeps its own copy
        return subprocess.Popen(args, env=cluster.env, stdout=log, stderr=subprocess.STDOUT)


def _finish(proc: subprocess.Popen, out: Path, timeout: float = 240) -> dict[str, Any]:
    try:
        proc.wait(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    log = (out.parent / "driver.log").read_text()
    assert proc.returncode == 0, f"the search driver failed:\n{log[-4000:]}"
    report: dict[str, Any] = json.loads(out.read_text())
    report["log"] = log
    logger.info("%s: driver seconds %s", out.parent.name, report["seconds"])
    return report


@pytest.fixture(scope="module")
def undisturbed(
    cluster: Cluster, model_root: Path, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("undisturbed") / "report.json"
    return _finish(_driver(cluster, model_root, out, None), out)


# ----------------------------------------------------------------------------- the tests


def test_node_slots_count_what_each_alive_node_holds() -> None:
    from workers.runtime import node_slots

    nodes = [
        {"NodeID": "a", "NodeManagerAddress": "10.0.0.1", "Alive": True,
         "Resources": {"CPU": 16.0, "GPU": 4.0}},
        {"NodeID": "b", "NodeManagerAddress": "10.0.0.2", "Alive": True,
         "Resources": {"CPU": 8.0}},
        {"NodeID": "c", "NodeManagerAddress": "10.0.0.3", "Alive": False,
         "Resources": {"CPU": 64.0, "GPU": 8.0}},
    ]  # fmt: skip
    assert [s.slots for s in node_slots({"CPU": 1, "GPU": 1}, nodes)] == [4, 0]  # one per GPU
    assert [s.slots for s in node_slots({"CPU": 3, "GPU": 0}, nodes)] == [5, 2]
    assert [s.slots for s in node_slots({"CPU": 8, "GPU": 1}, nodes)] == [2, 0]  # CPUs limit


@pytest.mark.slow  # with the next test: about 70 s on 2 shared cores, mostly Ray and torch starting
def test_a_search_spans_both_nodes(cluster: Cluster, undisturbed: dict[str, Any]) -> None:
    head = cluster.head.raylet()[1]
    second = cluster.second.raylet()[1]
    assert undisturbed["driver_node"] == head
    # one actor per node: SPREAD, though the head alone has room for both
    assert sorted(node for _, node in undisturbed["before"]) == sorted([head, second])
    assert all(done > 0 for *_, done in undisturbed["after"])  # both nodes took work
    (ready,) = [line for line in undisturbed["log"].splitlines() if "Ray workers ready" in line]
    assert f"(node {head[:8]}): 1" in ready  # the placement is logged
    assert f"(node {second[:8]}): 1" in ready
    assert undisturbed["front"]
    assert "4 Ray workers need {'CPU': 1} each" in undisturbed["too_many"]
    assert "can hold only 3" in undisturbed["too_many"]


@pytest.mark.slow
def test_losing_a_node_mid_search_gives_the_same_front(
    cluster: Cluster,
    model_root: Path,
    undisturbed: dict[str, Any],
    tmp_path: Path,
) -> None:
    raylet, victim = cluster.second.raylet()
    out = tmp_path / "report.json"
    proc = _driver(cluster, model_root, out, victim)
    try:
        deadline = time.monotonic() + 180
        while not (tmp_path / HOLDING).exists():  # a call is in flight on the victim node
            assert proc.poll() is None, (tmp_path / "driver.log").read_text()[-4000:]
            assert time.monotonic() < deadline, "no call ever reached the second node"
            time.sleep(0.1)
        os.kill(raylet, signal.SIGKILL)
        report = _finish(proc, out)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    head = cluster.head.raylet()[1]
    assert victim in {node for _, node in report["before"]}
    assert report["alive"] == [head]
    assert "lost during evaluate" in report["log"]  # the held call ran again, on the survivor
    assert not report["restarted_during_search"]  # the head was full: the survivor went on alone
    # once a CPU was free on the head, Ray restarted the lost actor there and it loaded the model
    assert {node for _, node, _ in report["after"]} == {head}
    assert report["front"] == undisturbed["front"]
    assert report["stage_fronts"] == undisturbed["stage_fronts"]
    assert report["evaluations"] == undisturbed["evaluations"]
