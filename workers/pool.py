"""A pool of model-holding Ray actors behind optishear's BatchEvaluator interface."""

from __future__ import annotations

import logging
import os
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from types import TracebackType
from typing import Any, Self

import ray
from ray.actor import ActorClass, ActorHandle
from ray.exceptions import NodeDiedError, ObjectLostError, RayActorError, RayError
from torch import Tensor

from optishear.config import EvaluationConfig, PruneConfig
from optishear.core.errors import ConfigError
from optishear.recipe.candidates import Candidate, Evaluation
from optishear.search.database import DatabaseInfo
from optishear.search.engine_spec import EngineSpec
from optishear.search.evaluator import Progress
from optishear.search.prefix import in_order, prefix_order
from optishear.search.shipped_jobs import JobProgress, JobResult, ShippedJob
from workers.actor import ActorInfo, ActorUsage, ModelActorRemote
from workers.errors import WorkerError
from workers.messages import capacity_text, placement, raised_in_worker, short
from workers.runtime import ADDRESS_ENV, node_slots, ray_runtime
from workers.startup import wait_ready

logger = logging.getLogger(__name__)


_CLOSE_TIMEOUT_S = 10.0


# What a call loses when its worker or that worker's node dies: the call is run again, on
# whichever worker is free (an evaluation gives the same answer wherever it runs).
_LOST = (RayActorError, ObjectLostError, NodeDiedError)


class RayEvaluator:
    """Evaluates candidates on `workers` Ray actors, each holding its own copy of the model.

    Implements optishear's BatchEvaluator: `evaluate` returns one Evaluation per candidate, in
    the order given. Candidates go out one chunk at a time to whichever actor is free, so a
    slow or restarting actor does not hold the others up. The calibration ids, the one large
    shared input, are put in the object store once.

    Placement: one GPU an actor where the cluster has GPUs, else `threads_per_worker` CPUs,
    spread over the nodes. `workers=None` asks for as many as the alive nodes hold (one per
    GPU); more than that is a ConfigError at once, since they could never all be placed.

    Ray must be running (see `workers.runtime`, or use `ray_evaluator`, which starts it).
    An actor that dies, or whose node dies, is restarted by Ray (`max_restarts`) wherever
    resources allow, and loads the model again; its unfinished call runs again at once on
    another free actor (each call at most `max_task_retries` times): a search goes on with
    the actors left. A worker that cannot load the model raises WorkerStartError at once, and
    one not up within `start_timeout_s` raises it then, as does a wait in which every actor
    is restarting.
    """

    def __init__(
        self,
        spec: EngineSpec,
        workers: int | None = None,
        *,
        calib_ids: Tensor | None = None,
        valid_ids: Tensor | None = None,
        threads_per_worker: int = 1,
        use_gpu: bool | None = None,
        max_restarts: int = 3,
        max_task_retries: int = 3,
        start_timeout_s: float = 600.0,
        chunk_size: int = 1,
        actor_class: ActorClass[Any] = ModelActorRemote,
    ) -> None:
        if workers is not None and workers < 1:
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
        self.start_timeout_s = start_timeout_s
        self.resources = {"num_cpus": threads_per_worker, "num_gpus": 1 if use_gpu else 0}
        workers = self._check_capacity(workers, {"CPU": threads_per_worker, "GPU": int(use_gpu)})
        refs = [None if ids is None else ray.put(ids) for ids in (calib_ids, valid_ids)]
        options = {
            **self.resources,
            "scheduling_strategy": "SPREAD",  # over the nodes, so that a search uses them all
            "max_restarts": max_restarts,
            # No retries by Ray: an in-flight call would wait for its own actor's restart,
            # forever if the dead node's resources are not found elsewhere. `_run` re-runs it
            # on any free actor instead.
            "max_task_retries": 0,
        }
        self._actors: list[ActorHandle] = [
            actor_class.options(**options).remote(self.spec, refs[0], threads_per_worker, refs[1])
            for _ in range(workers)
        ]
        self._idle: deque[ActorHandle] = deque()  # alive, as far as we know, and free
        self._probes: dict[ray.ObjectRef, ActorHandle] = {}  # lost actors: ready() once back
        try:
            self.infos = wait_ready(
                self._actors, start_timeout_s, self.resources, spec.config.model
            )
        except BaseException:
            self.close()
            raise
        self._idle.extend(self._actors)
        self._block_params = self.infos[0].block_params
        logger.info(
            "%d Ray workers ready on %s (%d thread(s) each): %s",
            workers,
            ", ".join(sorted({i.device for i in self.infos})),
            threads_per_worker,
            placement(self.infos),
        )

    def _check_capacity(self, workers: int | None, need: dict[str, int]) -> int:
        """The number of workers to start: as asked, or what the nodes hold when not asked."""
        slots = node_slots(need)
        capacity = sum(s.slots for s in slots)
        wanted = {k: v for k, v in need.items() if v}
        if workers is None:
            if capacity < 1:
                raise ConfigError(
                    f"no node of the Ray cluster can hold a worker, which needs {wanted}: "
                    f"{ray.cluster_resources()}"
                )
            logger.info("%d Ray workers: what the cluster's nodes hold (%s)", capacity, wanted)
            return capacity
        if workers > capacity:
            raise ConfigError(
                f"{workers} Ray workers need {wanted} each, but the cluster's alive nodes can "
                f"hold only {capacity} ({capacity_text(slots)}): ask for at most {capacity} "
                "or add nodes before the search starts"
            )
        return workers

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
        # chunks of mutants that share their first blocks (optishear.search.prefix)
        order = prefix_order(candidates)
        done = self._dispatch("evaluate", [candidates[i] for i in order], n_samples, n_tokens)
        return in_order(order, done)

    def layer_errors(self, candidates: Sequence[Candidate]) -> list[Evaluation]:
        return self._dispatch("layer_errors", candidates)

    def shipped(
        self, recipes: Sequence[PruneConfig], progress: Progress | None = None
    ) -> list[Evaluation]:
        """A recipe per call (a prune each): the free worker takes the next."""
        done = (
            None if progress is None else (lambda _, batch: [progress(e) for e in batch] and None)
        )
        calls = [([r],) for r in recipes]
        return [e for batch in self._run("shipped", calls, done) for e in batch]

    def owl_plan(self, target: float) -> tuple[float, ...]:
        """OWL's per-block plan (optishear's OwlPlanner): every worker holds the same model."""
        (plan,) = self._run("owl_plan", [(target,)])
        return tuple(plan)

    def shipped_jobs(
        self,
        jobs: Sequence[ShippedJob],
        evaluation: EvaluationConfig,
        held_out_ids: Tensor,
        progress: JobProgress | None = None,
    ) -> list[JobResult]:
        def more(i: int, result: JobResult) -> list[tuple[Any, ...]]:
            follow = progress(i, result) if progress is not None else None
            return [(p, n, evaluation, held_out_ids) for p, n in follow or ()]

        calls = [(p, n, evaluation, held_out_ids) for p, n in jobs]
        return self._run("shipped_job", calls, more)

    def _dispatch(self, method: str, items: Sequence[Any], *args: Any) -> list[Evaluation]:
        cands = list(items)
        chunks = [cands[i : i + self.chunk_size] for i in range(0, len(cands), self.chunk_size)]
        batches = self._run(method, [(chunk, *args) for chunk in chunks])
        return [e for batch in batches for e in batch]

    def _run(
        self,
        method: str,
        calls: Sequence[tuple[Any, ...]],
        on_result: Callable[[int, Any], Any] | None = None,
    ) -> list[Any]:
        """Call `method` once per argument tuple, each on whichever actor is free; results in
        call order, and each handed to `on_result` (with its call's index) as it comes, which
        may return more argument tuples to call next (their results follow, in the order asked).

        Not ray.util.ActorPool: its ordered `map` hands the next call out only once the oldest
        returns (a fast actor idles behind a slow one), and `map_unordered` loses which call a
        result belongs to. A call whose actor or node dies goes back to the head of the queue;
        the actor is asked `ready()` and takes work again once Ray has restarted it.
        """
        calls = list(calls)
        results: list[Any] = [None] * len(calls)
        todo = deque(range(len(calls)))
        reruns = [0] * len(calls)
        running: dict[ray.ObjectRef, tuple[ActorHandle, int]] = {}
        try:
            while todo or running:
                while todo and self._idle:
                    actor = self._idle.popleft()
                    i = todo.popleft()
                    running[getattr(actor, method).remote(*calls[i])] = (actor, i)
                if not running and not self._probes:
                    raise WorkerError(
                        f"every Ray worker has died for good ({self.max_restarts} restarts "
                        "allowed each)"
                    )
                # Only lost actors to wait for: bound the wait, they may never be placed again.
                timeout = None if running else self.start_timeout_s
                done, _ = ray.wait([*running, *self._probes], num_returns=1, timeout=timeout)
                if not done:
                    raise WorkerError(
                        f"no Ray worker came back within {self.start_timeout_s:.0f}s: "
                        f"{len(self._probes)} restarting, each asks for {self.resources}, "
                        f"the cluster has {ray.available_resources()} free"
                    )
                (ref,) = done
                if ref in self._probes:
                    self._rejoin(ref)
                    continue
                actor, i = running.pop(ref)
                try:
                    results[i] = ray.get(ref)
                except _LOST as exc:
                    self._probe(actor)
                    reruns[i] += 1
                    if reruns[i] > self.max_task_retries:
                        raise WorkerError(
                            f"a Ray worker died during {method} and its call was lost "
                            f"{reruns[i]} times ({self.max_task_retries} re-runs allowed): "
                            f"{short(exc)}"
                        ) from exc
                    logger.warning(
                        "a Ray worker was lost during %s (%s): its call runs again on the "
                        "next free one",
                        method,
                        short(exc, 200),
                    )
                    todo.appendleft(i)
                    continue
                except BaseException:
                    self._idle.append(actor)  # the call failed, not the actor
                    raise
                self._idle.append(actor)
                more = on_result(i, results[i]) if on_result is not None else None
                for call in more or ():  # asked for now, wanted soon: first in line
                    todo.appendleft(len(calls))
                    calls.append(call)
                    results.append(None)
                    reruns.append(0)
        finally:
            # Calls still out when an error ends the batch: their actors answer them in turn
            # and may take work again next time.
            self._idle.extend(actor for actor, _ in running.values())
        return results

    def _probe(self, actor: ActorHandle) -> None:
        # Retried by Ray while the actor restarts (the restart loads the model again); it
        # fails only once the actor is dead for good.
        self._probes[actor.ready.options(max_task_retries=-1).remote()] = actor

    def _rejoin(self, ref: ray.ObjectRef) -> None:
        actor = self._probes.pop(ref)
        try:
            info: ActorInfo = ray.get(ref)
        except RayError as exc:
            self._actors.remove(actor)
            reason = (
                raised_in_worker(exc)
                if isinstance(exc, RayActorError) and exc.actor_init_failed
                else short(exc, 200)
            )
            logger.warning("a Ray worker is gone for good (%s); %d left", reason, len(self._actors))
            return
        logger.warning("a Ray worker is back after a restart: %s", placement([info]))
        self._idle.append(actor)

    def actor_info(self) -> list[ActorInfo]:
        """Ask every worker again (after restarts, the pids and nodes differ from `self.infos`).

        A worker that is restarting answers once it is back (GetTimeoutError after
        `start_timeout_s`, if it cannot be placed again).
        """
        return self._ask_all("ready")

    def actor_usage(self) -> list[ActorUsage]:
        return self._ask_all("usage")

    def _ask_all(self, method: str) -> list[Any]:
        refs = [getattr(a, method).options(max_task_retries=-1).remote() for a in self._actors]
        return list(ray.get(refs, timeout=self.start_timeout_s))

    def close(self) -> None:
        """Stop the actors for good (the Ray runtime keeps running); each is first asked to free
        its layer database (a disk one removes its files), and killed after a few seconds."""
        if self._actors:
            ray.wait(
                [a.close.remote() for a in self._actors],
                num_returns=len(self._actors),
                timeout=_CLOSE_TIMEOUT_S,
            )
        for actor in self._actors:
            ray.kill(actor, no_restart=True)
        self._actors = []
        self._idle.clear()
        self._probes.clear()

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
    workers: int | None = None,
    address: str | None = None,
    calib_ids: Tensor | None = None,
    valid_ids: Tensor | None = None,
    threads_per_worker: int = 1,
) -> Iterator[RayEvaluator]:
    """Start or join Ray, and yield a RayEvaluator with `workers` actors.

    This is the `ray` entry of the `optishear.evaluators` entry points, which the CLI's
    `search --workers N` looks up. Without an address (argument or RAY_ADDRESS) Ray starts
    locally with this machine's cores, and the request must fit into them. `workers=None`:
    as many as the cluster's nodes hold (one per GPU where it has GPUs).
    """
    address = address or os.environ.get(ADDRESS_ENV) or None
    if workers is not None and address is None and not ray.is_initialized():
        cores = os.cpu_count() or 1
        if workers * threads_per_worker > cores:
            raise ConfigError(
                f"{workers} workers x {threads_per_worker} thread(s) need "
                f"{workers * threads_per_worker} CPUs; this machine has {cores}"
            )
    ids = {"calib_ids": calib_ids, "valid_ids": valid_ids}
    with (
        ray_runtime(address),
        RayEvaluator(spec, workers, threads_per_worker=threads_per_worker, **ids) as evaluator,
    ):
        yield evaluator
