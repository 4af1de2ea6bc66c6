"""A pool of model-holding Ray actors behind optishear's BatchEvaluator interface."""

from __future__ import annotations

import logging
import os
import re
import time
from collections import deque
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from types import TracebackType
from typing import Any, Self

import ray
from ray.actor import ActorClass, ActorHandle
from ray.exceptions import RayActorError
from torch import Tensor

from optishear.candidates import Candidate, Evaluation
from optishear.errors import ConfigError
from optishear.search.database import DatabaseInfo
from optishear.search.engine_spec import EngineSpec
from workers.actor import ActorInfo, ActorUsage, ModelActorRemote
from workers.errors import WorkerError, WorkerStartError
from workers.runtime import ADDRESS_ENV, ray_runtime

logger = logging.getLogger(__name__)

_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*(: |$)")


def _raised_in_worker(exc: RayActorError) -> str:
    """The exception line(s) at the end of the traceback Ray reports for a failed __init__."""
    lines = _ANSI.sub("", str(exc)).rstrip().splitlines()
    for i in range(len(lines) - 1, -1, -1):
        if _EXCEPTION_LINE.match(lines[i]):
            return "\n".join(lines[i:]).strip()
    return lines[-1].strip() if lines else type(exc).__name__


def _short(exc: BaseException, limit: int = 400) -> str:
    text = " ".join(_ANSI.sub("", str(exc)).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


_CLOSE_TIMEOUT_S = 10.0


class RayEvaluator:
    """Evaluates candidates on `workers` Ray actors, each holding its own copy of the model.

    Implements optishear's BatchEvaluator: `evaluate` returns one Evaluation per candidate, in
    the order given. Candidates go out one chunk at a time to whichever actor is free, so a
    slow or restarting actor does not hold the others up. The calibration ids, the one large
    shared input, are put in the object store once.

    Ray must be running (see `workers.runtime`, or use `ray_evaluator`, which starts it).
    An actor that dies is restarted and its unfinished calls re-run (`max_restarts`,
    `max_task_retries`); a worker that cannot load the model raises WorkerStartError at
    once, and one that is not up within `start_timeout_s` (say, resources never come free)
    raises it then.
    """

    def __init__(
        self,
        spec: EngineSpec,
        workers: int = 2,
        *,
        calib_ids: Tensor | None = None,
        threads_per_worker: int = 1,
        use_gpu: bool | None = None,
        max_restarts: int = 3,
        max_task_retries: int = 3,
        start_timeout_s: float = 600.0,
        chunk_size: int = 1,
        actor_class: ActorClass[Any] = ModelActorRemote,
    ) -> None:
        if workers < 1:
            raise ConfigError(f"workers must be >= 1, got {workers}")
        if threads_per_worker < 1 or chunk_size < 1:
            raise ConfigError("threads per worker and chunk size must be >= 1")
        if not ray.is_initialized():
            raise WorkerError("Ray is not running: call workers.runtime.start_ray() first")
        if use_gpu is None:  # the cluster's GPUs decide, not the driver's
            use_gpu = ray.cluster_resources().get("GPU", 0) >= 1
        self.spec = replace(spec, device="cuda" if use_gpu else "cpu")
        self.chunk_size = chunk_size
        self.max_restarts = max_restarts
        self.max_task_retries = max_task_retries
        self.resources = {"num_cpus": threads_per_worker, "num_gpus": 1 if use_gpu else 0}
        total = ray.cluster_resources()
        for key, need in (("CPU", workers * threads_per_worker), ("GPU", workers * use_gpu)):
            if need > total.get(key, 0):
                logger.warning(
                    "%d workers need %d %s, the cluster has %g now: the rest wait for nodes",
                    workers,
                    need,
                    key,
                    total.get(key, 0),
                )
        calib_ref = None if calib_ids is None else ray.put(calib_ids)
        options = {
            **self.resources,
            "max_restarts": max_restarts,
            "max_task_retries": max_task_retries,
        }
        self._actors: list[ActorHandle] = [
            actor_class.options(**options).remote(self.spec, calib_ref, threads_per_worker)
            for _ in range(workers)
        ]
        try:
            self.infos = self._wait_ready(start_timeout_s)
        except BaseException:
            self.close()
            raise
        self._block_params = self.infos[0].block_params
        logger.info(
            "%d Ray workers ready on %s (%d thread(s) each)",
            workers,
            ", ".join(sorted({i.device for i in self.infos})),
            threads_per_worker,
        )

    def _wait_ready(self, timeout_s: float) -> list[ActorInfo]:
        # No retries here: a worker that cannot start must fail the start, not be waited for.
        index = {
            a.ready.options(max_task_retries=0).remote(): i for i, a in enumerate(self._actors)
        }
        infos: list[ActorInfo | None] = [None] * len(self._actors)
        pending = list(index)
        deadline = time.monotonic() + timeout_s
        while pending:
            # One at a time, so that the first worker that fails stops the start at once.
            done, pending = ray.wait(
                pending, num_returns=1, timeout=max(0.0, deadline - time.monotonic())
            )
            if not done:
                raise WorkerStartError(
                    f"{len(pending)} of {len(self._actors)} Ray workers were not up after "
                    f"{timeout_s:.0f}s; each asks for {self.resources}, the cluster has "
                    f"{ray.available_resources()} free"
                )
            try:
                (info,) = ray.get(done)
            except RayActorError as exc:
                if exc.actor_init_failed:
                    raise WorkerStartError(
                        f"a Ray worker could not load model {self.spec.config.model!r}: "
                        f"{_raised_in_worker(exc)}"
                    ) from exc
                raise WorkerStartError(
                    f"a Ray worker died while loading model {self.spec.config.model!r} (out of "
                    f"memory?): {_short(exc)}"
                ) from exc
            infos[index[done[0]]] = info
        assert all(i is not None for i in infos)
        return [i for i in infos if i is not None]

    @property
    def block_params(self) -> tuple[int, ...]:
        return self._block_params

    @property
    def layer_layout(self) -> tuple[tuple[int, str, int], ...]:
        return self.infos[0].layer_layout

    def database_info(self) -> DatabaseInfo | None:
        """The first worker's layer database (every worker builds the same one)."""
        return self.infos[0].database

    @property
    def n_workers(self) -> int:
        return len(self._actors)

    @property
    def actors(self) -> list[ActorHandle]:
        return list(self._actors)

    def evaluate(
        self,
        candidates: Sequence[Candidate],
        n_samples: int | None = None,
        n_tokens: int | None = None,
    ) -> list[Evaluation]:
        return self._dispatch("evaluate", candidates, n_samples, n_tokens)

    def shipped(self, candidates: Sequence[Candidate], refit: bool) -> list[Evaluation]:
        return self._dispatch("shipped", candidates, refit)

    def owl_plan(self, target: float) -> tuple[float, ...]:
        """OWL's per-block plan (optishear's OwlPlanner): every worker holds the same model."""
        try:
            return tuple(ray.get(self._actors[0].owl_plan.remote(target)))
        except RayActorError as exc:
            raise WorkerError(f"a Ray worker died while planning OWL: {_short(exc)}") from exc

    def _dispatch(
        self, method: str, candidates: Sequence[Candidate], *args: Any
    ) -> list[Evaluation]:
        # Not ray.util.ActorPool: its ordered `map` hands the next chunk out only once the
        # oldest call returns (a fast actor idles behind a slow one), and `map_unordered`
        # loses which candidate a result belongs to. This keeps both: any free actor takes the
        # next chunk, and one ray.get in submission order gives pymoo its order back.
        cands = list(candidates)
        chunks = [cands[i : i + self.chunk_size] for i in range(0, len(cands), self.chunk_size)]
        refs = []
        idle = deque(self._actors)
        busy: dict[ray.ObjectRef, ActorHandle] = {}
        for chunk in chunks:
            if not idle:  # wait for any actor to finish, then give it the next chunk
                done, _ = ray.wait(list(busy), num_returns=1)
                idle.extend(busy.pop(ref) for ref in done)
            actor = idle.popleft()
            ref = getattr(actor, method).remote(chunk, *args)
            refs.append(ref)
            busy[ref] = actor
        try:
            batches = ray.get(refs)  # one call for the whole batch, in submission order
        except RayActorError as exc:
            raise WorkerError(
                "a Ray worker died during an evaluation and its call could not be re-run "
                f"({self.max_restarts} restarts and {self.max_task_retries} retries allowed): "
                f"{_short(exc)}"
            ) from exc
        return [e for batch in batches for e in batch]

    def actor_info(self) -> list[ActorInfo]:
        """Ask every worker again (after restarts, the pids differ from `self.infos`)."""
        return list(ray.get([a.ready.remote() for a in self._actors]))

    def actor_usage(self) -> list[ActorUsage]:
        return list(ray.get([a.usage.remote() for a in self._actors]))

    def close(self) -> None:
        """Stop the actors (for good: no restart); the Ray runtime itself keeps running.

        Each is first asked to free its layer database (a disk one removes its files); one
        that does not answer in a few seconds is killed all the same.
        """
        if self._actors:
            ray.wait(
                [a.close.remote() for a in self._actors],
                num_returns=len(self._actors),
                timeout=_CLOSE_TIMEOUT_S,
            )
        for actor in self._actors:
            ray.kill(actor, no_restart=True)
        self._actors = []

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


@contextmanager
def ray_evaluator(
    spec: EngineSpec,
    *,
    workers: int,
    address: str | None = None,
    calib_ids: Tensor | None = None,
    threads_per_worker: int = 1,
) -> Iterator[RayEvaluator]:
    """Start or join Ray, and yield a RayEvaluator with `workers` actors.

    This is the `ray` entry of the `optishear.evaluators` entry points, which the CLI's
    `search --workers N` looks up. Without an address (argument or RAY_ADDRESS) Ray starts
    locally with this machine's cores, and the request must fit into them.
    """
    address = address or os.environ.get(ADDRESS_ENV) or None
    if address is None and not ray.is_initialized():
        cores = os.cpu_count() or 1
        if workers * threads_per_worker > cores:
            raise ConfigError(
                f"{workers} workers x {threads_per_worker} thread(s) need "
                f"{workers * threads_per_worker} CPUs; this machine has {cores}"
            )
    with (
        ray_runtime(address),
        RayEvaluator(
            spec, workers, calib_ids=calib_ids, threads_per_worker=threads_per_worker
        ) as evaluator,
    ):
        yield evaluator
