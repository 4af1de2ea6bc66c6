"""The driver of the two-node cluster test (tests/workers/test_cluster.py), run as a script:
join the cluster, search on 2 Ray actors (one of which may be made to hold on a victim node
until that node is killed) and write what happened as JSON."""

from __future__ import annotations

import io
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

ARM, HOLDING = "arm", "holding"  # flag files: the driver arms the hold, the victim holds


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


if __name__ == "__main__":
    address, root, report_path, victim_id = sys.argv[1:5]
    _drive(address, Path(root), Path(report_path), victim_id or None)
