"""How the search evaluates candidates: the protocol, and the in-process implementation.

The Ray actors (workers/) implement the same protocol; the search never imports them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from torch import Tensor

from optishear.config import PruneConfig, SearchConfig
from optishear.evaluation.held_out import HeldOutComparison
from optishear.recipe.candidates import Candidate, Evaluation
from optishear.search.database import DatabaseInfo
from optishear.search.fitness import FitnessEngine


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

    def shipped(self, recipes: Sequence[PruneConfig]) -> list[Evaluation]:
        """Full-fidelity errors of the models the recipes ship (optishear.recipe.prune:
        statistics from the pruned prefix, the recipe's update of the survivors)."""
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
    """Optional for a BatchEvaluator: held-out perplexity of a candidate beside the baselines'
    (optishear.recipe.comparison), on a model it holds."""

    def compare_held_out(
        self, recipe: PruneConfig, config: SearchConfig, held_out_ids: Tensor
    ) -> HeldOutComparison: ...


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

    def shipped(self, recipes: Sequence[PruneConfig]) -> list[Evaluation]:
        return [self.engine.evaluate_shipped(r) for r in recipes]

    def owl_plan(self, target: float) -> tuple[float, ...]:
        return self.engine.owl_plan(target)

    def compare_held_out(
        self, recipe: PruneConfig, config: SearchConfig, held_out_ids: Tensor
    ) -> HeldOutComparison:
        return self.engine.compare_held_out(recipe, config, held_out_ids)
