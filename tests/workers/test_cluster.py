"""Ray workers on a real two-node Ray cluster started on this machine with `ray start`.

The head (2 CPUs) and a second node (1 CPU, its own ports and custom resource) run as
separate `ray start` process trees, each in its own session, so that teardown kills exactly
their processes, never another Ray on this machine (no `ray stop`). Search drivers run as
subprocesses with RAY_AUTH_MODE=disabled, like the cluster: this test process may have
imported Ray with another auth mode, and Ray fixes the mode at import.

Run as a script, this file is that driver (see `_drive`).
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.ray
logger = logging.getLogger(__name__)

HERE = Path(__file__).resolve()
RAY = Path(sys.executable).with_name("ray")
ARM, HOLDING = "arm", "holding"  # flag files: the driver arms the hold, the victim holds


# ----------------------------------------------------------------------------- the driver


def _search_config(model_root: Path) -> Any:
    from optishear.config import CalibrationConfig, SearchConfig

    calib = CalibrationConfig(source=str(model_root / "calib.txt"), n_samples=8, seq_len=24, seed=0)
    # No screen: every batch of the metric stage has 5-7 new candidates, so that each of the
    # two actors takes at least one call in every generation.
    return SearchConfig(
        model=str(model_root / "model"),
        sparsity=0.5,
        population=8,
        generations=3,
        seed=3,
        batch_size=4,
        calibration=calib,
        screen={"rungs": "off"},
    )


def _holding_worker(victim: str, flags: Path) -> type:
    import ray

    from workers.actor import ModelActor

    # A local class, so that Ray ships it by value to the worker processes.
    class HoldOnVictim(ModelActor):
        """Once armed, the actor on the victim node stays inside its next call (until its
        node is killed under it); anywhere else, or after a restart elsewhere, it works."""

        def evaluate(self, candidates, n_samples=None, n_tokens=None):  # type: ignore[no-untyped-def]
            here = ray.get_runtime_context().get_node_id()
            if here == victim and (flags / ARM).exists():
                (flags / HOLDING).write_text(str(os.getpid()))
                time.sleep(600)
            return super().evaluate(candidates, n_samples, n_tokens)

    return HoldOnVictim


class _Blocker:
    def ping(self) -> int:
        return 1


def _drive(address: str, model_root: Path, out: Path, victim: str | None) -> None:
    """Join the cluster, search on 2 actors and write what happened to `out` (JSON)."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    from optishear.core.errors import ConfigError
    from optishear.search.engine_spec import EngineSpec
    from optishear.search.loop import run_search
    from workers.actor import ModelActorRemote
    from workers.pool import RayEvaluator
    from workers.runtime import start_ray

    log = io.StringIO()  # the pool's messages, also on stderr
    for stream in (sys.stderr, log):
        handler = logging.StreamHandler(stream)
        handler.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))
        logging.getLogger("workers").addHandler(handler)
    logging.getLogger("workers").setLevel(logging.INFO)
    clock = time.monotonic()
    seconds: dict[str, float] = {}

    def lap(name: str) -> None:
        nonlocal clock
        seconds[name] = round(time.monotonic() - clock, 1)
        clock = time.monotonic()

    start_ray(address)
    lap("imports and joining")
    config = _search_config(model_root)
    spec = EngineSpec(config)
    report: dict[str, Any] = {"driver_node": ray.get_runtime_context().get_node_id()}
    try:
        RayEvaluator(spec, 4)  # 2 + 1 CPUs hold 3 one-thread workers
    except ConfigError as exc:
        report["too_many"] = str(exc)
    actor_class = ModelActorRemote
    blocker = None
    if victim is not None:
        actor_class = ray.remote(_holding_worker(victim, out.parent))
        # One of the head's 2 CPUs taken, so that the lost actor cannot be restarted before
        # the search ends: the survivor must finish it alone.
        here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
        blocker = ray.remote(_Blocker).options(num_cpus=1, scheduling_strategy=here).remote()
        ray.get(blocker.ping.remote())

    def arm(progress: Any) -> None:
        if victim is not None and progress.generation == 1:
            (out.parent / ARM).touch()

    with RayEvaluator(spec, 2, actor_class=actor_class) as evaluator:
        report["before"] = [(i.pid, i.node_id) for i in evaluator.infos]
        lap("actors up")
        result = run_search(evaluator, config, progress=arm)
        lap("search")
        if blocker is not None:  # room on the head now: Ray restarts the lost actor there
            report["restarted_during_search"] = "back after a restart" in log.getvalue()
            ray.kill(blocker)
        after = evaluator.actor_info()
        report["after"] = [(i.pid, i.node_id, i.evaluations) for i in after]
        lap("all actors answer")
    lap("close")
    summary = result.to_dict()
    report["front"] = summary["front"]  # a front record holds no timings
    report["stage_fronts"] = [s["front"] for s in summary["stages"]]
    report["evaluations"] = result.evaluations
    report["alive"] = sorted(n["NodeID"] for n in ray.nodes() if n["Alive"])
    report["seconds"] = seconds
    out.write_text(json.dumps(report))


# ----------------------------------------------------------------------------- the cluster


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _session_of(pid: int) -> int | None:
    """The session of a live process (None once it is gone, or a zombie no one reaps)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    state, _ppid, _pgrp, session = stat.rsplit(")", 1)[1].split()[:4]  # after "pid (comm)"
    return None if state == "Z" else int(session)


def _processes(sessions: set[int]) -> dict[int, str]:
    """Our cluster's processes, by session (Ray renames its workers, `ray::ModelActor`)."""
    found = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and _session_of(int(entry.name)) in sessions:
            try:
                found[int(entry.name)] = (entry / "cmdline").read_bytes().replace(b"\0", b" ")
            except OSError:
                continue
    return {pid: cmd.decode(errors="replace") for pid, cmd in found.items()}


@dataclass
class Node:
    session: int  # the `ray start` process's session: every process of this node is in it
    node_manager_port: int

    def raylet(self) -> tuple[int, str]:
        """The raylet's pid and Ray node id."""
        for pid, cmd in _processes({self.session}).items():
            if f"--node_manager_port={self.node_manager_port}" in cmd and "raylet" in cmd:
                node_id = cmd.split("--node_id=", 1)[1].split()[0]
                return pid, node_id
        raise AssertionError(f"no raylet with node manager port {self.node_manager_port}")


@dataclass
class Cluster:
    address: str
    head: Node
    second: Node
    env: dict[str, str]


def _ray_start(args: list[str], env: dict[str, str], node_manager_port: int) -> Node:
    proc = subprocess.Popen(
        [str(RAY), "start", *args, f"--node-manager-port={node_manager_port}"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its daemons stay in this new session
    )
    output, _ = proc.communicate(timeout=120)
    node = Node(proc.pid, node_manager_port)
    if proc.returncode != 0:
        _kill({node.session})
        raise AssertionError(f"ray start {' '.join(args)} failed:\n{output[-3000:]}")
    return node


def _kill(sessions: set[int]) -> None:
    """SIGKILL every process of these sessions, by pid, until none is left."""
    deadline = time.monotonic() + 30
    while (left := _processes(sessions)) and time.monotonic() < deadline:
        for pid in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.2)
    assert not _processes(sessions), "processes of the test cluster survived SIGKILL"


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    # A short folder: Ray's Unix sockets live under it (107 bytes at most).
    temp = Path(tempfile.mkdtemp(prefix="osr-", dir="/tmp"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env |= {"RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0", "RAY_DEDUP_LOGS": "0"}
    # The GCS marks a node dead after 5 failed health checks; 1 s apart, not 3 s (Ray's
    # default), so that the lost actor's restart elsewhere is not waited for as long.
    env |= {"RAY_health_check_period_ms": "1000"}
    gcs = _free_port()
    # Ports that default to fixed numbers, or that two nodes on one host must not share.
    common = [f"--temp-dir={temp}", "--disable-usage-stats"]
    base = random.randrange(20000, 30000, 200)
    started: list[Node] = []
    try:
        head = _ray_start(
            [
                "--head",
                f"--port={gcs}",
                "--include-dashboard=false",
                "--num-cpus=2",
                '--resources={"osr_head": 1}',
                f"--ray-client-server-port={_free_port()}",
                f"--dashboard-port={_free_port()}",
                f"--dashboard-agent-listen-port={_free_port()}",
                f"--object-manager-port={_free_port()}",
                f"--min-worker-port={base}",
                f"--max-worker-port={base + 99}",
                *common,
            ],
            env,
            _free_port(),
        )
        started.append(head)
        second = _ray_start(
            [
                f"--address=127.0.0.1:{gcs}",
                "--num-cpus=1",
                '--resources={"osr_second": 1}',
                f"--dashboard-agent-listen-port={_free_port()}",
                f"--object-manager-port={_free_port()}",
                f"--min-worker-port={base + 100}",
                f"--max-worker-port={base + 199}",
                *common,
            ],
            env,
            _free_port(),
        )
        started.append(second)
        yield Cluster(f"127.0.0.1:{gcs}", head, second, env)
    finally:
        _kill({n.session for n in started})
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
    args = [sys.executable, str(HERE), cluster.address, str(model_root), str(out), victim or ""]
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


if __name__ == "__main__":
    address, root, report_path, victim_id = sys.argv[1:5]
    _drive(address, Path(root), Path(report_path), victim_id or None)
