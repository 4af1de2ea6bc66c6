"""Waiting for a pool's new actors: each one's model loaded, or the start failed, and why."""

from __future__ import annotations

import logging
import time
from typing import Any

import ray
from ray.actor import ActorHandle
from ray.exceptions import RayActorError

from optishear.core.heartbeat import Heartbeat
from workers.actor import ActorInfo
from workers.errors import WorkerStartError
from workers.messages import raised_in_worker, short

logger = logging.getLogger(__name__)


def wait_ready(
    actors: list[ActorHandle],
    timeout_s: float,
    resources: dict[str, Any],
    model: str,
    *,
    log_seconds: float | None = None,
) -> list[ActorInfo]:
    """Every actor's ActorInfo once it holds its model, in order; WorkerStartError at the
    first that cannot load it, or when some are not up within `timeout_s`.

    A worker's start (the model loaded, its statistics gathered: minutes with a large
    calibration) logs a line every `log_seconds` (Heartbeat's default), so that a log that
    is not a terminal never goes quiet.
    """
    # No retries here: a worker that cannot start must fail the start, not be waited for.
    index = {a.ready.options(max_task_retries=0).remote(): i for i, a in enumerate(actors)}
    infos: list[ActorInfo | None] = [None] * len(actors)
    pending = list(index)
    deadline = time.monotonic() + timeout_s
    beat = Heartbeat(
        logger,
        f"starting {len(actors)} Ray worker(s): each loads {model} and gathers its statistics",
        len(actors),
        seconds=log_seconds,
    )
    while pending:
        left = deadline - time.monotonic()
        # One at a time, so that the first worker that fails stops the start at once.
        done, pending = ray.wait(pending, num_returns=1, timeout=max(0.0, min(left, beat.seconds)))
        if not done and left > beat.seconds:
            beat.step(beat.finished)
            continue
        if not done:
            raise WorkerStartError(
                f"{len(pending)} of {len(actors)} Ray workers were not up after "
                f"{timeout_s:.0f}s; each asks for {resources}, the cluster has "
                f"{ray.available_resources()} free"
            )
        try:
            (info,) = ray.get(done)
        except RayActorError as exc:
            if exc.actor_init_failed:
                raise WorkerStartError(
                    f"a Ray worker could not load model {model!r}: {raised_in_worker(exc)}"
                ) from exc
            raise WorkerStartError(
                f"a Ray worker died while loading model {model!r} (out of memory?): {short(exc)}"
            ) from exc
        infos[index[done[0]]] = info
        beat.step(len(actors) - len(pending))
    assert all(i is not None for i in infos)
    return [i for i in infos if i is not None]
