"""A search: its stages, space, budget, screen, allocation stage and fitness settings."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from optishear.config.base import (
    ConfigModel,
    Dtype,
    Objective,
    Seed,
    Stages,
    TargetConfig,
    Text,
    flag,
)
from optishear.config.calibration import EvaluationConfig, SearchCalibrationConfig
from optishear.config.fields import FrontRange, GenomeField, Genomes, ScreenRungs, ScreenSteps
from optishear.config.prune import Update
from optishear.core.genome import WANDA_GENOME


class AllocationConfig(ConfigModel):
    """The per-layer allocation stage: one sparsity level per linear layer (or per attention
    and per MLP of each block), a budget kept exact by its mutation, and a layer database."""

    granularity: Literal["layer", "part"] = Field(
        "layer",
        description="one level per linear layer, or per attention and per MLP of each block",
    )
    levels: int = Field(
        4,
        ge=1,
        le=20,
        description="levels on each side of the target (unstructured)",
        json_schema_extra=flag("allocation-levels"),
    )
    step: float = Field(
        0.05,
        gt=0,
        lt=0.5,
        description="sparsity between two levels",
        json_schema_extra=flag("allocation-step"),
    )
    selection: Literal["one_plus_lambda", "nsga3"] = Field(
        "one_plus_lambda",
        description="(1+lambda): the best of the parent and its `population` mutants; or "
        "NSGA-III with the same mutation and no crossover",
    )
    max_moves: int = Field(
        3, ge=1, le=64, description="level switches per mutation: 1 to this many",
        json_schema_extra=flag("moves"),
    )  # fmt: skip
    refit: bool = Field(
        False,
        description="layer database with SparseGPT's weight update for every stored mask, so "
        "that candidates are scored refit",
        json_schema_extra=flag("refit-database"),
    )
    masks: Literal["genome", "sparsegpt"] = Field(
        "genome",
        description="with refit: each stored layer masked by the stage's genome, its "
        "survivors then OBS-updated; or pruned by SparseGPT itself, which chooses the mask and "
        "the update together (the model then ships as SparseGPT with the searched per-layer "
        "sparsities)",
        json_schema_extra=flag("database-masks"),
    )
    database: Literal["auto", "memory", "disk", "off"] = Field(
        "auto",
        description="where the pre-pruned layers live: memory, disk (the search's folder), "
        "auto (memory when they fit in database_memory_gib) or off (mask every candidate)",
    )
    memory_gib: float = Field(
        4.0, gt=0, le=4096, description="auto: the most memory the layer database may take",
        json_schema_extra=flag("database-memory-gib"),
    )  # fmt: skip
    front: FrontRange | None = Field(
        None,
        description="search a front of error against achieved sparsity over 'low,high' "
        "(NSGA-III) instead of one target",
    )


class ScreenConfig(ConfigModel):
    """The opening screen of a metric (or joint) stage: successive halving over every
    row-canonical class of the metric space, before NSGA-III works on the survivors."""

    rungs: ScreenRungs = Field(
        ((1, 64), (2, 256)),
        description="screening rungs, SEQUENCESxTOKENS each (the first sequences' first "
        "tokens), comma-separated, optionally after 'layers' (each layer's output error on "
        "sampled rows, no forward: about a tenth of a 1x64 rung's cost); every class is "
        "scored on the first, the best share of each "
        "rung on the next, and the best `population` start NSGA-III at full fidelity; "
        "'off': NSGA-III from random genomes",
        json_schema_extra=flag("screen-rungs"),
    )
    keep: float = Field(
        0.25,
        gt=0,
        le=1,
        description="share of a rung's classes promoted to the next rung",
        json_schema_extra=flag("screen-keep"),
    )


class SearchConfig(TargetConfig):
    """A search: model, target, search space and budget, fitness, calibration, evaluation.

    Equal configs and seeds give equal fronts. The API's request body is this model.
    """

    model: Text = Field(
        description="a registered name (smollm2-135m), an HF folder, a .gguf file or a hub id"
    )
    stages: Stages = Field(
        "both", description="metric, layerwise, both (metric, then plan) or joint"
    )
    population: int = Field(16, ge=4, le=512, description="candidates per generation")
    generations: int = Field(8, ge=1, le=1000, description="generations per stage")
    seed: Seed = Field(0, description="search seed")
    step: float = Field(0.05, gt=0, lt=0.5, description="per-block sparsity step")
    levels: int = Field(1, ge=1, le=10, description="per-block offsets -levels..levels steps")
    genome: GenomeField = Field(
        WANDA_GENOME, description="the fixed metric of a layerwise-only search"
    )
    metric_space: Literal["second_order", "first_order"] = Field(
        "second_order",
        description="genomes of the metric search: with the second-order term of the inverse "
        "Hessian (h), or the paper's first-order space",
    )
    screen: ScreenConfig = Field(default_factory=lambda: ScreenConfig())
    seed_genomes: Genomes = Field(
        (),
        description="genomes that start the metric search next to the screen's survivors "
        "(';'-separated on the command line; --metric-from fills them from a finished search)",
    )
    low_fidelity_samples: ScreenSteps | None = Field(
        None,
        description="screen candidates on N calibration sequences first, or on N1,N2,... in "
        "steps, each promoting the best share to the next (default off)",
        json_schema_extra=flag("low-fidelity"),
    )
    promote_fraction: float = Field(
        0.5,
        gt=0,
        le=1,
        description="share of screened candidates promoted to the full evaluation",
        json_schema_extra=flag("promote"),
    )
    objective: Objective = Field(
        "kl", description="token KL to the dense model, or the paper's logits Frobenius error"
    )
    fitness_samples: int | None = Field(
        None,
        ge=1,
        le=1024,
        description="validation sequences that score the error (default: as many as the "
        "calibration sequences; of the calibration sequences when validation_share is 0)",
    )
    engine_stats: Literal["baseline", "dense"] = Field(
        "baseline",
        description="activation statistics that score masks during the search: those of "
        "Wanda's pruned model at the target (closer to how the shipped model is pruned) or "
        "of the dense model",
    )
    refit_top: int = Field(
        0,
        ge=0,
        le=16,
        description="refit the K best candidates (and Wanda) by least squares and recommend "
        "the best after refit; exports are then refit too (0: masks only)",
    )
    refit_holdout: int = Field(
        0,
        ge=0,
        le=64,
        description="with refit top: every Nth calibration sequence is held aside from the "
        "shipped refit (and Wanda+refit's) to choose each layer's damping on it (0: fixed)",
    )
    rescore_top: int = Field(
        0,
        ge=0,
        le=16,
        description="re-score the K best candidates (and Wanda) pruned as shipped, with "
        "statistics from the pruned prefix, and recommend the best (0: the engine's best); "
        "not with refit_top, which re-scores as shipped already",
    )
    fallback_baselines: bool = Field(
        True,
        description="score SparseGPT, Wanda+refit and Wanda (and OWL+SparseGPT and OWL+Wanda "
        "when unstructured, OWL+Wanda+refit too in an allocation search) as shipped beside the "
        "finalists, and recommend and ship one that beats them all",
        json_schema_extra=flag("fallback"),
    )
    max_evaluations: float | None = Field(
        None,
        gt=0,
        le=1_000_000,
        description="evaluation budget per stage, in full-evaluation equivalents (a screening "
        "on n of N sequences costs n/N); the stage stops when it is spent (default: only "
        "generations bound it)",
    )
    allocation: AllocationConfig = Field(default_factory=lambda: AllocationConfig())
    compare_baselines: bool = Field(
        False,
        description="when the search ends, measure the held-out perplexity of the recommended "
        "model and of Wanda and SparseGPT (and OWL+SparseGPT at an unstructured target, when "
        "the fallbacks are scored) at the same target, calibration and windows",
        json_schema_extra=flag("baselines"),
    )
    batch_size: int = Field(8, ge=1, le=256, description="sequences per forward pass")
    prefix_memory_gib: float = Field(
        1.0,
        ge=0,
        le=4096,
        description="memory for the block outputs of recent candidates, so that a candidate "
        "starts at the first block it changes (every few blocks' outputs where all would not "
        "fit; 0: every block runs for every candidate)",
    )
    dtype: Dtype = Field("float32", description="dtype the model is loaded in")
    calibration: SearchCalibrationConfig = Field(default_factory=SearchCalibrationConfig)
    evaluation: EvaluationConfig = Field(default_factory=EvaluationConfig)

    @model_validator(mode="after")
    def _rules(self) -> SearchConfig:
        a = self.allocation
        allocating = self.stages == "allocation"
        self._fill_target(
            sum(a.front) / 2 if allocating and a.front else None, dense_exceptions=allocating
        )
        if allocating:
            self._allocation_rules()
        if self.pattern.structured and self.stages in ("layerwise", "joint"):
            raise ValueError(
                f"an {self.pattern} pattern keeps every block at N/M: only the metric can be "
                "searched"
            )
        plans = "layerwise" in self.stage_list() or "joint" in self.stage_list()
        low, high = self.target - self.levels * self.step, self.target + self.levels * self.step
        if plans and not (low >= 0 and high < 1):
            raise ValueError(
                f"per-block sparsity {self.target:g} +- {self.levels} x {self.step:g} must stay "
                "within [0, 1): lower step or levels"
            )
        if self.refit_top and self.shipped_method() == "sparsegpt":
            raise ValueError(
                "database masks sparsegpt ship SparseGPT's own masks and update: a least-squares "
                "refit (refit top) would ship other masks"
            )
        if self.refit_holdout and not self.refit_top:
            raise ValueError("refit holdout chooses the shipped refit's damping: set refit top")
        if self.refit_holdout == 1:
            raise ValueError("refit holdout 1 would hold aside every sequence: use 0 or >= 2")
        if self.refit_top and self.rescore_top:
            raise ValueError(
                "refit top already re-scores its candidates as shipped: set refit top or "
                "rescore top, not both"
            )
        return self

    def _allocation_rules(self) -> None:
        a = self.allocation
        if a.front:
            low, high = a.front
            if a.selection != "nsga3":
                raise ValueError("a sparsity front needs selection nsga3: (1+lambda) keeps one")
            if not low <= self.target <= high:
                raise ValueError(
                    f"the target {self.target:g} must lie in the front's range {low:g}-{high:g}"
                )
            if self.pattern.structured and high > self.pattern.sparsity + 1e-9:
                raise ValueError(
                    f"an {self.pattern} pattern prunes at most {self.pattern.sparsity:g}: "
                    f"the front's range must end there"
                )
        if a.refit and a.database == "off":
            raise ValueError("the refit is carried by the layer database: it cannot be off")
        if a.masks == "sparsegpt" and not a.refit:
            raise ValueError(
                "SparseGPT's masks come with its weight update: database masks sparsegpt "
                "needs the refit database"
            )

    def allocation_levels(self) -> tuple[float, ...]:
        """The sparsities a layer may take in the allocation stage, ascending.

        N:M: dense or N:M. Unstructured: the target +- levels steps (or the front's range at
        the step), those within [0, 1); 0 means a dense layer.
        """
        a = self.allocation
        if self.pattern.structured:
            return (0.0, self.pattern.sparsity)
        if a.front:
            low, high = a.front
            count = round((high - low) / a.step + 1e-9) + 1
            grid = [low + j * a.step for j in range(count)]
        else:
            grid = [self.target + j * a.step for j in range(-a.levels, a.levels + 1)]
        return tuple(sorted({round(r, 9) for r in grid if 0 <= round(r, 9) < 1}))

    def shipped_update(self) -> Update:
        """How the shipped model's surviving weights were scored, so shipped: refit by least
        squares (refit_top), SparseGPT's OBS step (a refit layer database of genome masks), or
        not at all (SparseGPT's own masks carry their update)."""
        if self.refit_top:
            return "lstsq"
        if self.shipped_method() == "meta" and self._refit_database():
            return "obs"
        return "none"

    def shipped_method(self) -> Literal["meta", "sparsegpt"]:
        """The method that prunes a searched candidate as shipped: its genome ('meta'), or
        SparseGPT when the layer database holds SparseGPT's own layers."""
        if self._refit_database() and self.allocation.masks == "sparsegpt":
            return "sparsegpt"
        return "meta"

    def _refit_database(self) -> bool:
        return "allocation" in self.stage_list() and self.allocation.refit

    def stage_list(self) -> list[Literal["metric", "layerwise", "joint", "allocation"]]:
        if self.stages == "both":
            return ["metric"] if self.pattern.structured else ["metric", "layerwise"]
        return [self.stages]

    def full_samples(self) -> int:
        """Calibration sequences of a full-fidelity evaluation."""
        n = self.calibration.n_samples
        return min(self.fitness_samples or n, n)

    def metric_stages(self) -> list[str]:
        """The stages that search the metric genome."""
        return [s for s in self.stage_list() if s in ("metric", "joint")]

    def screened_stages(self) -> list[str]:
        """The stages that open with the screen (those searching the metric)."""
        return self.metric_stages() if self.screen.rungs else []

    def needs_hessians(self) -> bool:
        """Whether the fitness engine must keep second-order statistics (rho)."""
        metric = bool(self.metric_stages())
        seeds = any(g.second_order for g in self.seed_genomes)
        return (metric and (self.metric_space == "second_order" or seeds)) or (
            self.genome.second_order
        )

    def total_generations(self) -> int:
        """Progress steps: every stage's generations, and a step per screening rung."""
        rungs = len(self.screen.rungs) * len(self.screened_stages())
        return self.generations * len(self.stage_list()) + rungs

    def resume_identity(self) -> dict[str, Any]:
        """What a stored state must match to be resumed: every setting that shapes the search
        or its evaluations (all but the held-out evaluation and comparison and the baselines
        scored as shipped, which come after)."""
        return self.model_dump(
            mode="json", exclude={"evaluation", "compare_baselines", "fallback_baselines"}
        )
