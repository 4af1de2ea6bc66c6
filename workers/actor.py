"""The model-holding Ray actor: loads its model once and evaluates batches of candidates."""

from __future__ import annotations

import gc
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import ray
import torch
import transformers
from torch import Tensor

from optishear.config import EvaluationConfig, PruneConfig
from optishear.recipe.candidates import Candidate, Evaluation
from optishear.search.database import DatabaseInfo
from optishear.search.engine_spec import EngineSpec
from optishear.search.shipped_jobs import JobResult, run_job


@dataclass(frozen=True, slots=True)
class ActorInfo:
    """What a started worker reports back: enough to check it and to size the search."""

    pid: int
    node: str  # the node's IP address
    device: str
    threads: int
    block_params: tuple[int, ...]
    evaluations: int  # candidates this process has evaluated (a restart starts again at 0)
    layer_layout: tuple[tuple[int, str, int], ...] = ()  # (block, name, weights) per linear
    database: DatabaseInfo | None = None  # the allocation stage's layer database, if any
    node_id: str = ""  # Ray's node id: nodes can share an IP (several on one host or in pods)


@dataclass(frozen=True, slots=True)
class ActorUsage:
    """CPU time and resident memory of a worker process, and the size of the model it holds."""

    pid: int
    cpu_seconds: float  # process CPU time so far, all threads
    peak_rss_bytes: int | None  # VmHWM: the most this process ever held in RAM
    rss_bytes: int | None  # VmRSS now
    model_bytes: int  # parameters and buffers of the loaded model


def _proc_status_bytes(*keys: str) -> dict[str, int | None]:
    """Selected `kB` fields of /proc/self/status, in bytes (None where there is no /proc)."""
    found: dict[str, int | None] = dict.fromkeys(keys)
    try:
        lines = Path("/proc/self/status").read_text().splitlines()
    except OSError:
        return found
    for line in lines:
        name, _, value = line.partition(":")
        if name in found:
            found[name] = int(value.split()[0]) * 1024
    return found


class ModelActor:
    """Holds one model and its FitnessEngine (statistics, reference outputs).

    The model is loaded here, from the worker's own cache or folder: only the small spec and
    the calibration ids travel to the worker. Evaluations are idempotent: the dense weights are
    written back before every candidate, so a call that Ray retries after a crash, or one that
    follows a failed call, gives the same answer.
    """

    def __init__(
        self,
        spec: EngineSpec,
        calib_ids: Tensor | None = None,
        threads: int = 1,
        valid_ids: Tensor | None = None,
    ) -> None:
        torch.set_num_threads(threads)
        transformers.utils.logging.disable_progress_bar()  # worker output goes to the driver
        self.spec = spec
        self.engine = spec.build(calib_ids, valid_ids=valid_ids)
        self.evaluations = 0
        gc.collect()  # loading leaves garbage behind; free it before the first evaluation

    def ready(self) -> ActorInfo:
        return ActorInfo(
            os.getpid(),
            ray.util.get_node_ip_address(),
            str(self.engine.device),
            torch.get_num_threads(),
            tuple(self.engine.block_params),
            self.evaluations,
            self.engine.layer_layout,
            self.engine.database_info(),
            ray.get_runtime_context().get_node_id(),
        )

    def evaluate(
        self,
        candidates: Sequence[Candidate],
        n_samples: int | None = None,
        n_tokens: int | None = None,
    ) -> list[Evaluation]:
        results = []
        for candidate in candidates:
            # no restore first: a layer-database candidate rewrites only the layers that differ
            results.append(self.engine.evaluate(candidate, n_samples, n_tokens=n_tokens))
            self.evaluations += 1
        return results

    def layer_errors(self, candidates: Sequence[Candidate]) -> list[Evaluation]:
        results = [self.engine.evaluate_layers(c) for c in candidates]
        self.evaluations += len(candidates)
        return results

    def shipped(self, recipes: Sequence[PruneConfig]) -> list[Evaluation]:
        results = []
        for recipe in recipes:
            results.append(self.engine.evaluate_shipped(recipe))
            self.evaluations += 1
        return results

    def close(self) -> None:
        """Free the engine's layer database before the actor is stopped."""
        self.engine.close()

    def owl_plan(self, target: float) -> tuple[float, ...]:
        """OWL's per-block plan at `target`, from this worker's dense weights and statistics."""
        return self.engine.owl_plan(target)

    def shipped_job(
        self,
        prune: PruneConfig | None,
        name: str | None,
        evaluation: EvaluationConfig,
        ids: Tensor,
    ) -> JobResult:
        """A prune scored as shipped and (named) measured held out, on this worker's model."""
        self.evaluations += prune is not None
        return run_job(self.engine, prune, name, evaluation, ids)

    def usage(self) -> ActorUsage:
        status = _proc_status_bytes("VmHWM", "VmRSS")
        model = self.engine.model
        tensors = [*model.parameters(), *model.buffers()]
        return ActorUsage(
            os.getpid(),
            time.process_time(),
            status["VmHWM"],
            status["VmRSS"],
            sum(t.numel() * t.element_size() for t in tensors),
        )


# The remote class, defined once. Resources, restarts and retries are set per pool through
# .options(), so that the same class serves CPU-only machines and GPU clusters.
ModelActorRemote = ray.remote(ModelActor)
