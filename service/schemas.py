"""API request and response models (the typed boundary; the ORM tables stay inside).

The request body of a search is the library's `SearchConfig` (optishear.config), so every
default and cross-field rule is the library's; a scored candidate is the library's
`ScoredCandidate` (optishear.candidates) everywhere. Nothing here imports torch.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from datetime import datetime
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from optishear.candidates import ScoredCandidate, SearchSummary
from optishear.config import BUNDLED, SearchConfig, Text, validation_message
from optishear.errors import ConfigError, ModelSourceError
from optishear.settings import LibrarySettings
from optishear.sources import REGISTERED_MODELS, resolve_source

__all__ = ["validation_message"]

JobState = Literal["queued", "running", "succeeded", "failed", "cancelled"]
MetricUse = Literal["seed", "fixed"]
GenomeOrigin = Literal["recommended", "finalist", "front"]


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, frozen=True)


class MetricFrom(_In):
    """Reuse the genomes a succeeded search stored (service.genomes resolves this at submit)."""

    search: uuid.UUID = Field(description="a search that has succeeded")
    use: MetricUse = Field(
        "seed",
        description="seed: its best genomes start this metric search (before seed_genomes); "
        "fixed: its best genome is this search's metric, and only the per-block plan is "
        "searched (stages 'layerwise'; unstructured patterns only)",
    )


class SearchCreate(SearchConfig):
    """A search request: the library's SearchConfig, plus what a service must check."""

    model: Text = Field(description="a registered model name or an HF folder on the runners")
    # Not a library setting: the service expands it into seed_genomes or genome + stages at
    # submit, and keeps it in the stored request as the record of where those came from.
    metric_from: MetricFrom | None = Field(
        None, description="take seed genomes or the fixed metric from a succeeded search"
    )

    def fingerprint(self) -> str:
        """sha256 of the canonical body: equal for equal requests (defaults filled in)."""
        canonical = json.dumps(self.model_dump(mode="json"), sort_keys=True)
        return hashlib.sha256(canonical.encode()).hexdigest()

    def validate_sources(self, library: LibrarySettings) -> None:
        """Model and texts must be something every runner can open without a hub."""
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


class SearchOutcome(SearchSummary):
    """A finished search's summary, with where its recommendation is stored."""

    recommended_id: uuid.UUID
    persist_seconds: float = Field(0.0, description="this attempt's time in DB transactions")
    attempt_seconds: float = Field(0.0, description="this attempt's wall time")


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
    result: SearchOutcome | None = Field(description="when succeeded: what the search found")


class SearchPage(BaseModel):
    items: list[SearchRead]
    total: int
    limit: int
    offset: int


class CandidateRead(ScoredCandidate):
    """A stored front member (or the recommendation listed after the front)."""

    id: uuid.UUID
    recommended: bool


class FrontRead(BaseModel):
    search_id: uuid.UUID
    generation: int | None = Field(description="None: the final front of a finished search")
    candidates: list[CandidateRead]
    recommended_id: uuid.UUID | None
    baselines: list[ScoredCandidate] = Field(
        default_factory=list,
        description="published methods at the same target, once the search has succeeded",
    )


class PopulationMember(ScoredCandidate):
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
    candidate_key: str = Field(description="the exported candidate's key ('<genome>-<plan>')")
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


class GenomeRef(BaseModel):
    index: int = Field(description="the genome's index (0: Wanda's)")
    spec: str = Field(description="as `seed_genomes`, `genome` and `--genome` read it")
    formula: str


class StoredGenomeRead(BaseModel):
    """One of a succeeded search's best distinct genomes (rank 0: its recommendation's)."""

    search_id: uuid.UUID
    family: str = Field(description="the model's architecture (config.json model_type)")
    pattern: str
    target: float
    rank: int
    origin: GenomeOrigin = Field(
        description="where `error` comes from: the recommended candidate, a finalist pruned "
        "as shipped, or a front member (the engine's error)"
    )
    genome: GenomeRef
    error: float
    created_at: datetime


class GenomePage(BaseModel):
    items: list[StoredGenomeRead]
    total: int
    limit: int
    offset: int


class ModelRead(BaseModel):
    name: str
    description: str
    cached: bool


class Message(BaseModel):
    detail: str


class Health(BaseModel):
    status: str
    checks: dict[str, str] = Field(default_factory=dict)
