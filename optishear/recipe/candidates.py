"""Candidates, their evaluations, and the one record of a scored candidate and of a search.

A *candidate* is a metric genome plus a per-block plan, or (the allocation stage) one sparsity
per prunable linear layer, whose per-block means are then its per-block plan. `ScoredCandidate` is the single shape
in which a scored candidate leaves the library: the search's results, the runner's stored rows
and populations, the API's front, population and baselines, and the dashboard all read it.
No torch here: the API serves these without loading the maths.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass

from pydantic import BaseModel, Field

from optishear.config.prune import PruneConfig
from optishear.core.genome import Genome
from optishear.evaluation.held_out import HeldOutComparison

GAP_TOLERANCE = 1e-6  # a plan meets the target when its weighted mean is this close


@dataclass(frozen=True, slots=True)
class Candidate:
    """A point of the search space: a metric genome and one sparsity per decoder block.

    With `layer_sparsity` (one per linear layer, in `optishear.model.blocks.iter_linears` order) the
    layers decide, and `block_sparsity` holds their parameter-weighted mean per block.
    """

    genome: Genome
    block_sparsity: tuple[float, ...]
    layer_sparsity: tuple[float, ...] = ()

    @property
    def plan(self) -> tuple[float, ...]:
        """What decides the masks: the per-layer sparsities if set, else the per-block ones."""
        return self.layer_sparsity or self.block_sparsity

    def key(self) -> tuple[int, tuple[float, ...]]:
        """Candidates with equal keys give identical masks (per-row/N:M comparison).

        A model has more linear layers than blocks, so a per-layer key never equals a
        per-block one.
        """
        return self.genome.row_canonical().index, tuple(round(r, 9) for r in self.plan)

    def label(self) -> str:
        """A short stable id: '<genome index>-<plan>' ('uniform' or a checksum of the plan);
        per-layer plans that are not uniform are marked 'L'."""
        mark = "L" if self.layer_sparsity and len(set(self.layer_sparsity)) > 1 else ""
        return f"{self.genome.index}-{mark}{plan_label(self.plan)}"


def plan_label(block_sparsity: Sequence[float]) -> str:
    if len(set(block_sparsity)) == 1:
        return "uniform"
    return format(zlib.crc32(",".join(f"{r:.9f}" for r in block_sparsity).encode()), "08x")


def block_means(
    layer_sparsity: Sequence[float], layer_numel: Sequence[int], layer_block: Sequence[int]
) -> tuple[float, ...]:
    """Per block, the parameter-weighted mean of its layers' sparsities."""
    n_blocks = max(layer_block) + 1 if layer_block else 0
    pruned = [0.0] * n_blocks
    total = [0] * n_blocks
    for r, n, b in zip(layer_sparsity, layer_numel, layer_block, strict=True):
        pruned[b] += r * n
        total[b] += n
    return tuple(p / t if t else 0.0 for p, t in zip(pruned, total, strict=True))


@dataclass(frozen=True, slots=True)
class Evaluation:
    """Objectives of one candidate: model-wise reconstruction error and achieved sparsity."""

    error: float  # mean token KL(dense || pruned), or relative logits Frobenius error
    sparsity: float  # achieved share of pruned weights (parameter-weighted)
    n_samples: int  # calibration sequences used (fewer for a low-fidelity pass)
    seconds: float
    n_tokens: int = 0  # tokens of each sequence used; 0: all (the full sequence length)


class GenomeRecord(BaseModel):
    f1: str
    f2: str
    alpha: str
    beta: str
    h: str = Field("none", description="second-order term: none, sqrt_rho or rho")
    index: int
    formula: str

    @classmethod
    def of(cls, genome: Genome) -> GenomeRecord:
        return cls(**genome.to_dict())


class Objectives(BaseModel):
    error: float = Field(description="model-wise reconstruction error (minimised)")
    gap: float = Field(description="distance of the parameter-weighted sparsity from the target")


class ScoredCandidate(BaseModel):
    """A scored candidate as every layer shows it (front member, population member, baseline)."""

    key: str = Field(description="'<genome index>-<plan>': equal keys, equal candidates")
    name: str | None = Field(
        None, description="a baseline's name: 'Wanda' (uniform plan) or 'OWL+Wanda'"
    )
    method: str | None = Field(
        None,
        description="set when a published method, not the genome, pruned it (a baseline "
        "scored as shipped: 'SparseGPT', 'OWL+SparseGPT', 'Wanda+refit', ...)",
    )
    genome: GenomeRecord
    block_sparsity: list[float] = Field(description="the per-block plan")
    layer_sparsity: list[float] = Field(
        default_factory=list,
        description="per linear layer (allocation stage; empty when the blocks decide)",
    )
    objectives: Objectives
    sparsity: float = Field(description="achieved parameter-weighted sparsity")
    meets_target: bool
    n_samples: int = Field(description="calibration sequences behind the error")

    def candidate(self) -> Candidate:
        return Candidate(
            Genome.from_index(self.genome.index),
            tuple(self.block_sparsity),
            tuple(self.layer_sparsity),
        )


@dataclass(frozen=True)
class Scored:
    """A candidate with its evaluation and its distance from the target."""

    candidate: Candidate
    evaluation: Evaluation
    gap: float
    name: str | None = None  # set on baselines
    method: str | None = None  # set when a published method, not the genome, pruned it

    @property
    def meets_target(self) -> bool:
        return self.gap <= GAP_TOLERANCE

    def record(self) -> ScoredCandidate:
        c, e = self.candidate, self.evaluation
        key = c.label()
        if self.method is not None:  # never equal to a genome candidate's key
            key = f"{self.method.lower().replace('+', '-')}-{plan_label(c.plan)}"
        return ScoredCandidate(
            key=key,
            name=self.name,
            method=self.method,
            genome=GenomeRecord.of(c.genome),
            block_sparsity=[float(r) for r in c.block_sparsity],
            layer_sparsity=[float(r) for r in c.layer_sparsity],
            objectives=Objectives(error=float(e.error), gap=float(self.gap)),
            sparsity=float(e.sparsity),
            meets_target=self.meets_target,
            n_samples=int(e.n_samples),
        )


class StageSummary(BaseModel):
    stage: str
    front_size: int


class SearchSummary(BaseModel):
    """What a finished search reports, next to its front (library, runner, API, dashboard)."""

    recommended_key: str
    evaluations: int
    cache_hits: int
    search_seconds: float
    stages: list[StageSummary] = Field(default_factory=list)
    refitted: list[ScoredCandidate] = Field(
        default_factory=list, description="refit_top: the finalists as shipped, refit"
    )
    rescored: list[ScoredCandidate] = Field(
        default_factory=list, description="rescore_top: the finalists as shipped, masks only"
    )
    baselines: list[ScoredCandidate] = Field(
        default_factory=list,
        description="published methods at the same target (Wanda; OWL+Wanda when unstructured)",
    )
    fallbacks: list[ScoredCandidate] = Field(
        default_factory=list,
        description="published methods at the same target pruned as shipped, scored beside "
        "the finalists (SparseGPT, Wanda+refit, Wanda; OWL+ each when unstructured)",
    )
    fallback: str = Field(
        "", description="set when a published method beat every searched candidate as shipped"
    )
    shipped: PruneConfig | None = Field(
        None,
        description="the prune that makes the recommended model: every export and the "
        "held-out comparison prune by it",
    )
    selection_rule: str = ""
    database: str = Field(
        "", description="the allocation stage's layer database: layers, levels, size, build time"
    )
    held_out: HeldOutComparison | None = Field(
        None,
        description="compare_baselines: held-out perplexity of the dense model, the "
        "recommended model and Wanda and SparseGPT (and OWL+SparseGPT at an unstructured "
        "target) at the same target, calibration and windows",
    )
