"""How the search evaluates candidates: the protocol, and the in-process implementation.

The Ray actors (workers/) implement the same protocol; the search never imports them.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Protocol, runtime_checkable

from torch import Tensor

from optishear.config import EvaluationConfig, PruneConfig, SearchConfig
from optishear.evaluation.held_out import HeldOutComparison, HeldOutRow
from optishear.recipe.candidates import Candidate, Evaluation
from optishear.recipe.comparison import comparison_jobs, comparison_of
from optishear.search.database import DatabaseInfo
from optishear.search.fitness import FitnessEngine

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
    """Optional for a BatchEvaluator: held-out perplexity of models pruned from the one it
    holds (optishear.recipe.comparison.held_out_row), one row per (name, prune) job."""

    def held_out_rows(
        self,
        jobs: Sequence[tuple[str, PruneConfig | None]],
        evaluation: EvaluationConfig,
        held_out_ids: Tensor,
    ) -> list[HeldOutRow]: ...


def compare_held_out(
    evaluator: HeldOutComparer, recipe: PruneConfig, config: SearchConfig, held_out_ids: Tensor
) -> HeldOutComparison:
    """Held-out perplexity of the dense model, the model `recipe` ships, Wanda and SparseGPT,
    the rows shared out among the evaluator's workers."""
    start = time.perf_counter()
    jobs = comparison_jobs(recipe, config)
    rows = evaluator.held_out_rows(jobs, config.evaluation, held_out_ids)
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
        return [self.engine.evaluate(c, n_samples, n_tokens=n_tokens) for c in candidates]

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

    def held_out_rows(
        self,
        jobs: Sequence[tuple[str, PruneConfig | None]],
        evaluation: EvaluationConfig,
        held_out_ids: Tensor,
    ) -> list[HeldOutRow]:
        return [self.engine.held_out_row(n, p, evaluation, held_out_ids) for n, p in jobs]
