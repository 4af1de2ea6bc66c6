"""API request and response models (the typed boundary; the ORM models stay inside)."""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from optishear.data import BUNDLED, CalibrationConfig
from optishear.errors import ConfigError, ModelSourceError
from optishear.evaluate import EvalConfig
from optishear.masks import Pattern
from optishear.models import REGISTERED_MODELS, resolve_source
from optishear.search.loop import SearchSettings
from optishear.settings import LibrarySettings

# No NUL characters: Postgres text and file paths both reject them.
Text = Annotated[str, StringConstraints(min_length=1, max_length=1024, pattern=r"^[^\x00]+$")]
Seed = Annotated[int, Field(ge=0, le=2**31 - 1)]
JobState = Literal["queued", "running", "succeeded", "failed", "cancelled"]


def validation_message(errors: Sequence[Mapping[str, Any]]) -> str:
    """pydantic's errors as one line, 'field: message; ...' (the API's 422 detail, the CLI's)."""
    parts = []
    for err in errors[:5]:
        where = ".".join(str(p) for p in err.get("loc", ()) if p != "body")
        parts.append(f"{where}: {err.get('msg', 'invalid')}" if where else err.get("msg", ""))
    return "; ".join(parts) or "invalid request"


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, frozen=True)


class CalibrationIn(_In):
    """Calibration text: 'wiki' (bundled) or a text/jsonl file on the runners' machines."""

    source: Text = BUNDLED
    n_samples: int = Field(16, ge=1, le=1024)
    seq_len: int = Field(256, ge=8, le=8192)
    seed: Seed = 0

    def config(self) -> CalibrationConfig:
        return CalibrationConfig(self.source, self.n_samples, self.seq_len, self.seed)


class EvaluationIn(_In):
    """Held-out text for the perplexity of exported checkpoints."""

    text: Text = BUNDLED
    seq_len: int = Field(512, ge=2, le=8192)
    windows: int = Field(64, ge=1, le=4096)
    batch_size: int = Field(4, ge=1, le=256)

    def config(self) -> EvalConfig:
        return EvalConfig(self.seq_len, self.windows, self.batch_size)


class SearchCreate(_In):
    """A search: model, target, pattern, search budget, calibration and evaluation settings."""

    model: Text = Field(description="a registered model name or an HF folder on the runners")
    sparsity: float | None = Field(None, gt=0, lt=1, description="default 0.5, or N/M")
    pattern: Annotated[str, StringConstraints(max_length=32, pattern=r"^[^\x00]+$")] = (
        "unstructured"
    )
    stages: Literal["metric", "layerwise", "both", "joint"] = "both"
    population: int = Field(16, ge=4, le=512)
    generations: int = Field(8, ge=1, le=1000, description="per stage")
    seed: Seed = 0
    step: float = Field(0.05, gt=0, lt=0.5)
    levels: int = Field(1, ge=1, le=10)
    low_fidelity_samples: int | None = Field(None, ge=1, le=1024)
    promote_fraction: float = Field(0.5, gt=0, le=1)
    objective: Literal["kl", "logits_fro"] = "kl"
    fitness_samples: int | None = Field(None, ge=1, le=1024)
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
    batch_size: int = Field(8, ge=1, le=256)
    calibration: CalibrationIn = Field(default_factory=CalibrationIn)
    evaluation: EvaluationIn = Field(default_factory=EvaluationIn)

    def target(self) -> float:
        pattern = Pattern.parse(self.pattern)
        if self.sparsity is not None:
            return self.sparsity
        return pattern.sparsity if pattern.structured else 0.5

    def search_settings(self) -> SearchSettings:
        """The library's settings; raises ConfigError for inconsistent combinations."""
        return SearchSettings(
            self.target(),
            Pattern.parse(self.pattern),
            self.stages,
            self.population,
            self.generations,
            self.seed,
            self.step,
            self.levels,
            low_fidelity_samples=self.low_fidelity_samples,
            promote_fraction=self.promote_fraction,
            refit_top=self.refit_top,
            rescore_top=self.rescore_top,
        )

    def total_generations(self) -> int:
        return self.generations * len(self.search_settings().stage_list())

    def fingerprint(self) -> str:
        """sha256 of the canonical body: equal for equal requests (defaults filled in)."""
        canonical = json.dumps(self.model_dump(mode="json"), sort_keys=True)
        return hashlib.sha256(canonical.encode()).hexdigest()

    def validate_sources(self, library: LibrarySettings) -> None:
        """Model and texts must be something every runner can open without a hub."""
        self.search_settings()
        self.calibration.config()
        self.evaluation.config()
        known = ", ".join(REGISTERED_MODELS)
        try:
            source = resolve_source(self.model, library)
        except (ModelSourceError, ValueError, OSError) as exc:
            raise ConfigError(f"{exc}; known models: {known}") from exc
        if source.kind not in ("registered", "folder", "gguf"):
            raise ConfigError(
                f"unknown model {self.model!r}: known models are {known}, or give the path of "
                "an HF folder (with config.json) that the runners can read"
            )
        for what, text in (
            ("calibration", self.calibration.source),
            ("evaluation", self.evaluation.text),
        ):
            if text != BUNDLED and not _is_file(text):
                raise ConfigError(
                    f"{what} text {text!r} is neither {BUNDLED!r} (bundled) nor an existing file"
                )


def _is_file(text: str) -> bool:
    try:
        return Path(text).expanduser().is_file()
    except (OSError, ValueError):
        return False


class Progress(BaseModel):
    generation: int = Field(description="completed generations, across stages")
    total_generations: int
    evaluations: int
    best_error: float | None = Field(description="lowest reconstruction error so far")
    elapsed_s: float
    eta_s: float | None


class SearchRead(BaseModel):
    id: uuid.UUID
    status: JobState
    model: str
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    progress: Progress
    attempts: int
    cancel_requested: bool
    error: str | None
    request: SearchCreate
    result: dict[str, Any] | None = Field(
        description="when succeeded: recommended candidate id, evaluations, cache hits, seconds"
    )


class SearchPage(BaseModel):
    items: list[SearchRead]
    total: int
    limit: int
    offset: int


class GenomeRead(BaseModel):
    f1: str
    f2: str
    alpha: str
    beta: str
    index: int
    formula: str


class Objectives(BaseModel):
    error: float = Field(description="model-wise reconstruction error (minimised)")
    gap: float = Field(description="distance of the parameter-weighted sparsity from the target")


class _ScoredRead(BaseModel):
    """A scored candidate: what a front member and a population member both show."""

    key: str
    genome: GenomeRead
    block_sparsity: list[float]
    objectives: Objectives
    sparsity: float
    meets_target: bool
    n_samples: int = Field(description="calibration sequences behind the error")


class CandidateRead(_ScoredRead):
    id: uuid.UUID
    recommended: bool


class BaselineRead(BaseModel):
    name: str = Field(description="'Wanda' (uniform plan) or 'OWL+Wanda' (unstructured only)")
    error: float = Field(description="reconstruction error, measured as the candidates' is")
    gap: float = Field(description="distance of the parameter-weighted sparsity from the target")
    sparsity: float
    block_sparsity: list[float] = Field(default_factory=list, description="its per-block plan")


class FrontRead(BaseModel):
    search_id: uuid.UUID
    generation: int | None = Field(description="None: the final front of a finished search")
    candidates: list[CandidateRead]
    recommended_id: uuid.UUID | None
    baselines: list[BaselineRead] = Field(
        default_factory=list,
        description="published methods at the same target, once the search has succeeded",
    )


class PopulationMember(_ScoredRead):
    on_front: bool = Field(description="on this generation's Pareto front")


class PopulationRead(BaseModel):
    search_id: uuid.UUID
    generation: int | None = Field(description="None: no generation completed yet")
    candidates: list[PopulationMember] = Field(
        description="every distinct candidate of the population after this generation"
    )


class GenerationRead(BaseModel):
    number: int
    stage: str
    stage_generation: int
    evaluations: int
    total_evaluations: int
    best_error: float
    seconds: float
    elapsed_s: float
    created_at: datetime


class CheckpointCreate(_In):
    candidate_id: uuid.UUID | None = Field(None, description="default: the recommended one")


class CheckpointRead(BaseModel):
    id: uuid.UUID
    search_id: uuid.UUID
    candidate_id: uuid.UUID
    status: JobState
    created_at: datetime
    finished_at: datetime | None
    attempts: int
    error: str | None
    size_bytes: int | None
    sha256: str | None
    perplexity: float | None = Field(description="held-out perplexity of the pruned model")
    eval_tokens: int | None
    sparsity: float | None = Field(description="measured share of zero prunable weights")
    download_url: str | None


class ModelRead(BaseModel):
    name: str
    description: str
    cached: bool


class Message(BaseModel):
    detail: str


class Health(BaseModel):
    status: str
    checks: dict[str, str] = Field(default_factory=dict)
