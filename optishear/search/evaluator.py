"""How the search evaluates candidates: the protocol, and the in-process implementation.

The Ray actors (workers/) implement the same protocol; the search never imports them.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Protocol, runtime_checkable

from torch import Tensor

from optishear.config import EvaluationConfig, PruneConfig, SearchConfig
from optishear.core.heartbeat import Heartbeat, Listener
from optishear.evaluation.held_out import HeldOutComparison, HeldOutRow
from optishear.recipe.candidates import Candidate, Evaluation
from optishear.recipe.comparison import comparison_jobs, comparison_of
from optishear.search.database import DatabaseInfo
from optishear.search.fitness import FitnessEngine
from optishear.search.prefix import in_order, prefix_order
from optishear.search.shipped_jobs import JobProgress, JobResult, ShippedJob, run_job

logger = logging.getLogger(__name__)

Progress = Callable[[Evaluation], None]


class BatchEvaluator(Protocol):
    """Evaluates candidates, returning one Evaluation each, in the order given."""

    @property
    def block_params(self) -> tuple[int, ...]: ...

    @property
    def layer_layout(self) -> tuple[tuple[int, str, int], ...]:
        """(block, name, weight count) of every prunable linear, in iter_linears order."""
        ...

    def evaluate(
        self,
        candidates: Sequence[Candidate],
        n_samples: int | None = None,
        n_tokens: int | None = None,
    ) -> list[Evaluation]:
        """At full fidelity, or on the first n_samples sequences' first n_tokens tokens."""
        ...

    def layer_errors(self, candidates: Sequence[Candidate]) -> list[Evaluation]:
        """Layer-wise proxy errors (optishear.search.layer_proxy): a screen's cheapest rung."""
        ...

    def shipped(
        self, recipes: Sequence[PruneConfig], progress: Progress | None = None
    ) -> list[Evaluation]:
        """Full-fidelity errors of the models the recipes ship (optishear.recipe.prune:
        statistics from the pruned prefix, the recipe's update of the survivors), in order;
        `progress` is called with each as it is measured, in any order."""
        ...


@runtime_checkable
class OwlPlanner(Protocol):
    """Optional for a BatchEvaluator: OWL's per-block plan, for the OWL+Wanda baseline."""

    def owl_plan(self, target: float) -> tuple[float, ...]: ...


@runtime_checkable
class DatabaseReporter(Protocol):
    """Optional for a BatchEvaluator: what its layer database is and cost (or None)."""

    def database_info(self) -> DatabaseInfo | None: ...


@runtime_checkable
class HeldOutComparer(Protocol):
    """Optional for a BatchEvaluator: prunes of the model it holds scored as shipped and
    measured held out (optishear.search.shipped_jobs), shared out among its workers."""

    def shipped_jobs(
        self,
        jobs: Sequence[ShippedJob],
        evaluation: EvaluationConfig,
        held_out_ids: Tensor,
        progress: JobProgress | None = None,
    ) -> list[JobResult]:
        """Each job's error as shipped and held-out row (optishear.search.shipped_jobs), in
        order; `progress` hears each as it is measured, and the jobs it returns are run too
        (their results follow)."""
        ...


def compare_held_out(
    evaluator: HeldOutComparer,
    recipe: PruneConfig,
    config: SearchConfig,
    held_out_ids: Tensor,
    listener: Listener | None = None,
    known: dict[str, HeldOutRow] | None = None,
) -> HeldOutComparison:
    """Held-out perplexity of the dense model, the model `recipe` ships, Wanda and SparseGPT,
    the rows shared out among the evaluator's workers; `known` rows (measured with the
    as-shipped scoring: what ships, OWL+SparseGPT's where it was scored) are not measured
    again."""
    start = time.perf_counter()
    known = dict(known or {})
    jobs: list[ShippedJob] = [(p, n) for n, p in comparison_jobs(recipe, config) if n not in known]
    if jobs:  # a search that scored the baselines as shipped measured its rows there
        logger.info("measuring held-out perplexity: %s", ", ".join(str(n) for _, n in jobs))
    beat = Heartbeat(logger, "measuring held-out perplexity", len(jobs), listener=listener)

    def done(_: int, __: JobResult) -> None:
        beat.step(beat.finished + 1)

    with beat.ticking():  # each job is a prune and a forward: minutes on a large calibration
        got = evaluator.shipped_jobs(jobs, config.evaluation, held_out_ids, done) if jobs else []
    rows = [row for _, row in got if row is not None]
    rows += list(known.values())  # OWL+SparseGPT's too, where the as-shipped scoring gave it
    cal = config.calibration
    return comparison_of(
        rows,
        recipe,
        config,
        (cal.n_samples, cal.seq_len),
        held_out_ids.numel(),
        time.perf_counter() - start,
    )


class InProcessEvaluator:
    """Evaluates on one FitnessEngine in this process."""

    def __init__(self, engine: FitnessEngine) -> None:
        self.engine = engine

    @property
    def block_params(self) -> tuple[int, ...]:
        return tuple(self.engine.block_params)

    @property
    def layer_layout(self) -> tuple[tuple[int, str, int], ...]:
        return self.engine.layer_layout

    def database_info(self) -> DatabaseInfo | None:
        return self.engine.database_info()

    def close(self) -> None:
        """Take the engine off its model (which stays) and free its layer database."""
        self.engine.close()

    def evaluate(
        self,
        candidates: Sequence[Candidate],
        n_samples: int | None = None,
        n_tokens: int | None = None,
    ) -> list[Evaluation]:
        order = prefix_order(candidates)  # mutants of one parent share their first blocks
        done = [self.engine.evaluate(candidates[i], n_samples, n_tokens=n_tokens) for i in order]
        return in_order(order, done)

    def layer_errors(self, candidates: Sequence[Candidate]) -> list[Evaluation]:
        return [self.engine.evaluate_layers(c) for c in candidates]

    def shipped(
        self, recipes: Sequence[PruneConfig], progress: Progress | None = None
    ) -> list[Evaluation]:
        out = []
        for r in recipes:
            out.append(self.engine.evaluate_shipped(r))
            if progress is not None:
                progress(out[-1])
        return out

    def owl_plan(self, target: float) -> tuple[float, ...]:
        return self.engine.owl_plan(target)

    def shipped_jobs(
        self,
        jobs: Sequence[ShippedJob],
        evaluation: EvaluationConfig,
        held_out_ids: Tensor,
        progress: JobProgress | None = None,
    ) -> list[JobResult]:
        todo, out = list(jobs), []
        for i, (prune, name) in enumerate(todo):  # grows with what `progress` asks for
            out.append(run_job(self.engine, prune, name, evaluation, held_out_ids))
            if progress is not None:
                todo.extend(progress(i, out[-1]) or ())
        return out
