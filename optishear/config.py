"""Every setting of a calibration, an evaluation, a prune and a search: defaults and rules, once.

These pydantic models are the one typed config. The library reads them directly, the API's
request model extends `SearchConfig`, and the command lines generate their flags from them
(`optishear.cli.flags`): a new setting is one field here. No torch is imported, so the API
validates a request without loading the maths. Each field's `flag` (in `json_schema_extra`)
is its command-line name where that differs from the field's name.
"""

from __future__ import annotations

import typing
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    model_validator,
)

from optishear.errors import ConfigError
from optishear.fields import (
    BlockSparsity,
    FrontRange,
    GenomeField,
    Genomes,
    PatternField,
    ScreenRungs,
    ScreenSteps,
)
from optishear.genome import WANDA_GENOME
from optishear.patterns import Pattern, check_target

BUNDLED = "wiki"  # the bundled Wikipedia sample (calibration split / evaluation split)

# No NUL characters: Postgres text and file paths both reject them.
Text = Annotated[str, StringConstraints(min_length=1, max_length=1024, pattern=r"^[^\x00]+$")]
Seed = Annotated[int, Field(ge=0, le=2**31 - 1)]
Method = Literal["magnitude", "wanda", "ria", "sparsegpt", "meta"]  # optishear.methods builds each
METHODS: tuple[str, ...] = typing.get_args(Method)
Stages = Literal["metric", "layerwise", "both", "joint", "allocation"]
Objective = Literal["kl", "logits_fro"]
Dtype = Literal["float32", "bfloat16", "float16"]
DTYPES: tuple[str, ...] = typing.get_args(Dtype)


def _flag(name: str, **extra: Any) -> dict[str, Any]:
    return {"flag": name, **extra}


class _Config(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, frozen=True)


def default_sparsity(pattern: Pattern) -> float:
    """The target when none is given: N/M for an N:M pattern, else half the weights."""
    return pattern.sparsity if pattern.structured else 0.5


class _Target(_Config):
    """A target sparsity and pattern; the one place where the default target is chosen."""

    sparsity: float | None = Field(
        None, gt=0, lt=1, description="target (parameter-weighted mean) share of pruned weights"
    )
    pattern: PatternField = Field(Pattern(), description="unstructured, 2:4, 4:8, ...")

    def _fill_target(
        self, fallback: float | None = None, *, dense_exceptions: bool = False
    ) -> None:
        if self.sparsity is None:  # frozen: written once, before anyone can read it
            value = default_sparsity(self.pattern) if fallback is None else fallback
            object.__setattr__(self, "sparsity", value)
        assert self.sparsity is not None
        check_target(self.sparsity, self.pattern, dense_exceptions=dense_exceptions)

    @property
    def target(self) -> float:
        """The resolved sparsity (never None once validated)."""
        assert self.sparsity is not None
        return self.sparsity


class CalibrationConfig(_Config):
    """Calibration: how many sequences of how many tokens, from which text, with which seed."""

    source: Text = Field(
        BUNDLED,
        description="calibration text: 'wiki' (bundled), a .txt/.jsonl file or hf:NAME",
        json_schema_extra=_flag("calib"),
    )
    n_samples: int = Field(
        32, ge=1, le=1024, description="calibration sequences", json_schema_extra=_flag("nsamples")
    )
    seq_len: int = Field(
        256, ge=8, le=8192, description="tokens per sequence", json_schema_extra=_flag("seqlen")
    )
    seed: Seed = Field(
        0, description="seed of the sequences' offsets", json_schema_extra=_flag("calib-seed")
    )


class SearchCalibrationConfig(CalibrationConfig):
    """A search's calibration: fewer sequences by default than a prune's, as each candidate
    is scored on them (every other field as in CalibrationConfig)."""

    # A CalibrationConfig given by a caller is taken field by field.
    model_config = ConfigDict(from_attributes=True)

    n_samples: int = Field(
        16, ge=1, le=1024, description="calibration sequences", json_schema_extra=_flag("nsamples")
    )


class EvaluationConfig(_Config):
    """Held-out perplexity: fixed windows of text the pruning never saw."""

    text: Text = Field(
        BUNDLED,
        description="held-out text: 'wiki' (bundled), a .txt/.jsonl file or hf:NAME",
        json_schema_extra=_flag("eval-text"),
    )
    seq_len: int = Field(
        512, ge=2, le=8192, description="tokens per window", json_schema_extra=_flag("eval-seqlen")
    )
    windows: int = Field(
        64, ge=1, le=4096, description="at most this many windows",
        json_schema_extra=_flag("eval-windows"),
    )  # fmt: skip
    batch_size: int = Field(
        4, ge=1, le=256, description="windows per forward pass",
        json_schema_extra=_flag("eval-batch-size"),
    )  # fmt: skip


class PlanConfig(_Config):
    """How the per-block sparsity is chosen; OWL's lambda and M follow Yin et al. (2024)."""

    kind: Literal["uniform", "owl", "explicit"] = Field(
        "uniform", description="per-block sparsity plan", json_schema_extra=_flag("plan")
    )
    owl_lambda: float = Field(0.08, gt=0, lt=0.5, description="OWL: largest deviation")
    owl_m: float = Field(5.0, gt=0, description="OWL: outlier threshold (times the mean)")
    block_sparsity: BlockSparsity = Field(
        (),
        description="explicit plan: one sparsity per block, comma-separated",
        json_schema_extra=_flag("block-sparsity", aliases=["--layer-sparsity"]),
    )
    linear_sparsity: BlockSparsity = Field(
        (),
        description="explicit plan: one sparsity per linear layer (blocks in order, each "
        "block's linears in module order), comma-separated; 0 keeps a layer dense",
        json_schema_extra=_flag("linear-sparsity"),
    )

    @model_validator(mode="after")
    def _explicit(self) -> PlanConfig:
        given = bool(self.block_sparsity) + bool(self.linear_sparsity)
        if self.kind == "explicit" and given != 1:
            raise ValueError(
                "an explicit plan needs one sparsity per block or one per linear layer"
            )
        if self.kind != "explicit" and given:
            raise ValueError(
                "per-block or per-layer sparsities are only given with an explicit plan"
            )
        return self


class AllocationConfig(_Config):
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
        json_schema_extra=_flag("allocation-levels"),
    )
    step: float = Field(
        0.05,
        gt=0,
        lt=0.5,
        description="sparsity between two levels",
        json_schema_extra=_flag("allocation-step"),
    )
    selection: Literal["one_plus_lambda", "nsga3"] = Field(
        "one_plus_lambda",
        description="(1+lambda): the best of the parent and its `population` mutants; or "
        "NSGA-III with the same mutation and no crossover",
    )
    max_moves: int = Field(
        3, ge=1, le=64, description="level switches per mutation: 1 to this many",
        json_schema_extra=_flag("moves"),
    )  # fmt: skip
    refit: bool = Field(
        False,
        description="layer database with SparseGPT's weight update for every stored mask, so "
        "that candidates are scored refit",
        json_schema_extra=_flag("refit-database"),
    )
    database: Literal["auto", "memory", "disk", "off"] = Field(
        "auto",
        description="where the pre-pruned layers live: memory, disk (the search's folder), "
        "auto (memory when they fit in database_memory_gib) or off (mask every candidate)",
    )
    memory_gib: float = Field(
        4.0, gt=0, le=4096, description="auto: the most memory the layer database may take",
        json_schema_extra=_flag("database-memory-gib"),
    )  # fmt: skip
    front: FrontRange | None = Field(
        None,
        description="search a front of error against achieved sparsity over 'low,high' "
        "(NSGA-III) instead of one target",
    )


class ScreenConfig(_Config):
    """The opening screen of a metric (or joint) stage: successive halving over every
    row-canonical class of the metric space, before NSGA-III works on the survivors."""

    rungs: ScreenRungs = Field(
        ((1, 64), (2, 256)),
        description="screening rungs, SEQUENCESxTOKENS each (the first sequences' first "
        "tokens), comma-separated; every class is scored on the first, the best share of each "
        "rung on the next, and the best `population` start NSGA-III at full fidelity; "
        "'off': NSGA-III from random genomes",
        json_schema_extra=_flag("screen-rungs"),
    )
    keep: float = Field(
        0.25,
        gt=0,
        le=1,
        description="share of a rung's classes promoted to the next rung",
        json_schema_extra=_flag("screen-keep"),
    )


class PruneConfig(_Target):
    """One prune: method (and genome for 'meta'), target, pattern, plan and statistics."""

    method: Method = Field("wanda", description="pruning method")
    genome: GenomeField | None = Field(
        None,
        description="meta metric genome (method meta; default Wanda's), e.g. "
        "'f1=sqrt,f2=identity,alpha=one,beta=inv_col_sum'",
    )
    plan: PlanConfig = Field(default_factory=PlanConfig)
    stats: Literal["pruned", "dense"] = Field(
        "pruned",
        description="activation statistics from the pruned prefix (Wanda, SparseGPT) or the "
        "dense model",
    )
    batch_size: int = Field(8, ge=1, le=256, description="sequences per forward pass")
    reconstruct: bool = Field(
        False,
        description="refit the surviving weights by least squares after masking (wanda, ria, meta)",
    )
    refit_solver: Literal["cg", "exact"] = Field(
        "cg",
        description="how the refit solves each layer: conjugate gradients on the shared Gram "
        "matrix (fast at any width), or an exact factorisation per row (the reference)",
    )

    @model_validator(mode="after")
    def _rules(self) -> PruneConfig:
        if self.method == "meta" and self.genome is None:
            object.__setattr__(self, "genome", WANDA_GENOME)
        if self.method != "meta" and self.genome is not None:
            raise ValueError("a genome is given with method 'meta', and only with it")
        explicit = self.plan.block_sparsity or self.plan.linear_sparsity
        per_layer = bool(self.plan.linear_sparsity)
        # An explicit plan without a target is its own (unweighted) mean.
        self._fill_target(
            sum(explicit) / len(explicit) if explicit else None, dense_exceptions=per_layer
        )
        if self.pattern.structured and self.plan.kind != "uniform" and not per_layer:
            raise ValueError(
                f"an {self.pattern} pattern keeps every block at N/M: use a uniform plan"
            )
        if per_layer and self.pattern.structured:
            allowed = (0.0, self.pattern.sparsity)
            if any(min(abs(r - a) for a in allowed) > 1e-9 for r in explicit):
                raise ValueError(
                    f"under {self.pattern} a layer is pruned {self.pattern} "
                    f"({self.pattern.sparsity:g}) or kept dense (0)"
                )
        if self.reconstruct and self.method in ("sparsegpt", "magnitude"):
            raise ValueError(
                "reconstruct applies to activation-aware mask methods (wanda, ria, meta): "
                "sparsegpt always reconstructs, and magnitude gathers no calibration inputs"
            )
        return self


class SearchConfig(_Target):
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
        json_schema_extra=_flag("low-fidelity"),
    )
    promote_fraction: float = Field(
        0.5,
        gt=0,
        le=1,
        description="share of screened candidates promoted to the full evaluation",
        json_schema_extra=_flag("promote"),
    )
    objective: Objective = Field(
        "kl", description="token KL to the dense model, or the paper's logits Frobenius error"
    )
    fitness_samples: int | None = Field(
        None,
        ge=1,
        le=1024,
        description="of the calibration sequences, how many score the error (default all)",
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
    rescore_top: int = Field(
        0,
        ge=0,
        le=16,
        description="re-score the K best candidates (and Wanda) pruned as shipped, with "
        "statistics from the pruned prefix, and recommend the best (0: the engine's best); "
        "not with refit_top, which re-scores as shipped already",
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
        "model and of Wanda and SparseGPT at the same target, calibration and windows",
        json_schema_extra=_flag("baselines"),
    )
    batch_size: int = Field(8, ge=1, le=256, description="sequences per forward pass")
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
        or its evaluations (all but the held-out evaluation and comparison, which come after)."""
        return self.model_dump(mode="json", exclude={"evaluation", "compare_baselines"})


def config_error(exc: Exception) -> ConfigError:
    """A pydantic ValidationError as one ConfigError line, 'field: message; ...'."""
    errors = getattr(exc, "errors", None)
    if errors is None:
        return ConfigError(str(exc))
    return ConfigError(validation_message(errors()))


def validation_message(errors: Any) -> str:
    """pydantic's errors as one line, 'field: message; ...' (the API's 422 detail, the CLI's)."""
    parts = []
    for err in list(errors)[:5]:
        where = ".".join(str(p) for p in err.get("loc", ()) if p != "body")
        msg = str(err.get("msg", "invalid")).removeprefix("Value error, ")
        parts.append(f"{where}: {msg}" if where else msg)
    return "; ".join(parts) or "invalid request"
