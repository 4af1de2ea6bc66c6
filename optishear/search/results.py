"""What a search reports: per-generation progress and snapshots, stage outcomes, the result."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from optishear.config import SearchConfig
from optishear.evaluation.held_out import HeldOutComparison
from optishear.recipe.candidates import (
    GAP_TOLERANCE,
    Candidate,
    Scored,
    SearchSummary,
    StageSummary,
)


@dataclass(frozen=True)
class SearchProgress:
    stage: str
    stage_index: int
    n_stages: int
    generation: int
    n_generations: int
    evaluations: int
    cache_hits: int
    best_error: float
    elapsed: float
    eta: float
    done: int = 0  # progress steps completed: generations, and screening rungs (generation < 0)


@dataclass(frozen=True)
class GenerationSnapshot:
    """What a caller may persist after each generation (the service writes it to its DB).

    `front` is the non-dominated set of the current population with the evaluations known so
    far (low-fidelity ones included); `population` is that whole population (one entry per
    distinct candidate), of which `front` is a subset; `state` is the versioned JSON state
    (optishear.search.state) that `run_search(resume_from=...)` continues from.
    """

    progress: SearchProgress
    number: int  # completed generations across stages, 1-based
    record: dict[str, Any]
    front: list[Scored]
    state: bytes
    population: list[Scored] = field(default_factory=list)


@dataclass
class StageOutcome:
    stage: str
    front: list[Scored]
    population: tuple[Scored, ...] = ()  # the stage's last population
    baseline: Candidate | None = None  # the candidate the stage started from


@dataclass
class SearchResult:
    config: SearchConfig
    stages: list[StageOutcome]
    recommended: Scored
    history: list[dict[str, Any]]
    evaluations: int
    cache_hits: int
    seconds: float
    # The finalists again, pruned as shipped: refit (refit_top) or masks only (rescore_top).
    refitted: list[Scored] = field(default_factory=list)
    rescored: list[Scored] = field(default_factory=list)
    # The candidates re-scored as shipped, with their engine (mask-only) errors.
    finalists: list[Scored] = field(default_factory=list)
    # Wanda (and OWL+Wanda for unstructured targets) at the same target, mask-only errors.
    baselines: list[Scored] = field(default_factory=list)
    database: str = ""  # the allocation stage's layer database: size, storage, build time
    # compare_baselines: held-out perplexity of the recommended model, Wanda and SparseGPT.
    held_out: HeldOutComparison | None = None

    @property
    def front(self) -> list[Scored]:
        return self.stages[-1].front

    def listed(self) -> list[Scored]:
        """The front, then the finalists off it (the recommendation may be one of them)."""
        keys = {s.candidate.key() for s in self.front}
        return [*self.front, *(s for s in self.finalists if s.candidate.key() not in keys)]

    def summary(self) -> SearchSummary:
        return SearchSummary(
            recommended_key=self.recommended.candidate.label(),
            evaluations=self.evaluations,
            cache_hits=self.cache_hits,
            search_seconds=self.seconds,
            stages=[StageSummary(stage=o.stage, front_size=len(o.front)) for o in self.stages],
            refitted=[s.record() for s in self.refitted],
            rescored=[s.record() for s in self.rescored],
            baselines=[b.record() for b in self.baselines],
            selection_rule=self.selection_rule(),
            database=self.database,
            held_out=self.held_out,
        )

    def to_dict(self) -> dict[str, Any]:
        """The whole result as JSON data (the CLI's search.json)."""
        return {
            "config": self.config.model_dump(mode="json"),
            "summary": self.summary().model_dump(mode="json"),
            "recommended": self.recommended.record().model_dump(mode="json"),
            "front": [s.record().model_dump(mode="json") for s in self.front],
            "stages": [
                {"stage": o.stage, "front": [s.record().model_dump(mode="json") for s in o.front]}
                for o in self.stages
            ],
            "history": self.history,
        }

    def selection_rule(self) -> str:
        finalists = self.refitted or self.rescored
        if not finalists:
            return (
                "lowest reconstruction error among front members whose parameter-weighted "
                f"sparsity is within {GAP_TOLERANCE:g} of the target"
            )
        how = (
            "refit by least squares, the lowest error after the refit"
            if self.refitted
            else "pruned as shipped (statistics from the pruned prefix), the lowest error"
        )
        return (
            f"of {len(finalists)} finalists meeting the target (the best distinct candidates "
            f"of the last population, and its baseline with the uniform plan), {how}"
        )
