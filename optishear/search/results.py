"""What a search reports: per-generation progress and snapshots, stage outcomes, the result."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from optishear.config import PruneConfig, SearchConfig
from optishear.evaluation.held_out import HeldOutComparison
from optishear.recipe.candidates import (
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
    # compare_baselines: held-out perplexity of the recommended model and the baselines.
    held_out: HeldOutComparison | None = None
    # The prune that makes the recommended model (optishear.search.finish): what ships.
    recipe: PruneConfig | None = None
    # The published baselines pruned as shipped, and the note when one of them is recommended.
    fallbacks: list[Scored] = field(default_factory=list)
    fallback: str = ""

    @property
    def front(self) -> list[Scored]:
        return self.stages[-1].front

    def listed(self) -> list[Scored]:
        """The front, then the finalists off it, then a recommended baseline (the
        recommendation is one of them)."""
        keys = {s.candidate.key() for s in self.front}
        out = [*self.front, *(s for s in self.finalists if s.candidate.key() not in keys)]
        if self.recommended.method is not None:
            out.append(self.recommended)
        return out

    def summary(self) -> SearchSummary:
        return SearchSummary(
            recommended_key=self.recommended.record().key,
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
            fallbacks=[b.record() for b in self.fallbacks],
            fallback=self.fallback,
            shipped=self.recipe,
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
        how = {
            "lstsq": "refit by least squares",
            "obs": "with SparseGPT's OBS update of the survivors",
            "none": "masks only",
        }[self.config.shipped_update()]
        rule = (
            f"of {len(finalists)} finalists (the best distinct candidates of the last "
            "population meeting the target, and its baseline with the uniform plan), pruned as "
            f"shipped (statistics from the pruned prefix, {how}), the lowest error"
        )
        if self.fallbacks:
            names = ", ".join(str(b.name) for b in self.fallbacks)
            rule += f"; {names}, pruned as published, recommended instead when lower"
        return rule
