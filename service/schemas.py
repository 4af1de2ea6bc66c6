"""API request and response models (the typed boundary; the ORM tables stay inside).

The request body of a search is the library's `SearchConfig` (optishear.config), so every
default and cross-field rule is the library's; a scored candidate is the library's
`ScoredCandidate` (optishear.recipe.candidates) everywhere. Nothing here imports torch.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from datetime import datetime
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from optishear.config import BUNDLED, SearchConfig, Text, validation_message
from optishear.core.errors import ConfigError, ModelSourceError
from optishear.core.files import user_path
from optishear.core.patterns import check_pattern_fits
from optishear.core.settings import LibrarySettings
from optishear.model.sources import REGISTERED_MODELS, layer_widths, resolve_source
from optishear.recipe.candidates import ScoredCandidate, SearchSummary

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

    model: Text = Field(
        description="a registered model name (GET /api/models), or an HF folder under the "
        "server's data folders",
        examples=list(REGISTERED_MODELS),
    )
    # Not a library setting: the service expands it into seed_genomes or genome + stages at
    # submit, and keeps it in the stored request as the record of where those came from.
    metric_from: MetricFrom | None = Field(
        None, description="take seed genomes or the fixed metric from a succeeded search"
    )

    def fingerprint(self) -> str:
        """sha256 of the canonical body: equal for equal requests (defaults filled in)."""
        canonical = json.dumps(self.model_dump(mode="json"), sort_keys=True)
        return hashlib.sha256(canonical.encode()).hexdigest()

    def validate_sources(
        self, library: LibrarySettings, *, roots: tuple[Path, ...] | None = None
    ) -> None:
        """Model and texts must be something every runner can open without a hub, and an N:M
        pattern must divide the model's layers (read from its config.json, no weights).

        With `roots` (the API), a server-side path must lie under one of them, checked before
        anything looks at it: the message is the same whether or not the path exists."""
        known = ", ".join(REGISTERED_MODELS)
        if self.model not in REGISTERED_MODELS and not _under_roots(self.model, roots):
            raise ConfigError(
                f"model {self.model!r} is neither a registered model ({known}) nor a path under "
                "the server's data folders (OPTISHEAR_DATA_ROOTS)"
            )
        try:
            source = resolve_source(self.model, library)
        except (ModelSourceError, ValueError, OSError) as exc:
            raise ConfigError(f"{exc}; known models: {known}") from exc
        if source.kind not in ("registered", "folder", "gguf"):
            raise ConfigError(
                f"unknown model {self.model!r}: known models are {known}, or give the path of "
                "an HF folder (with config.json) that the runners can read"
            )
        for layer, width in layer_widths(self.model, library).items():
            check_pattern_fits(self.pattern, width, f"inputs ({layer} = {width})")
        for what, text in (
            ("calibration", self.calibration.source),
            ("evaluation", self.evaluation.text),
        ):
            if text == BUNDLED:
                continue
            if not _under_roots(text, roots):
                raise ConfigError(
                    f"{what} text {text!r} is neither {BUNDLED!r} (bundled) nor a file under "
                    "the server's data folders (OPTISHEAR_DATA_ROOTS)"
                )
            if not _is_file(text):
                raise ConfigError(
                    f"{what} text {text!r} is neither {BUNDLED!r} (bundled) nor an existing file"
                )


def _is_file(text: str) -> bool:
    try:
        return user_path(text).is_file()
    except (OSError, ValueError):  # a name too long, a NUL byte, an unknown ~user
        return False


def _under_roots(text: str, roots: tuple[Path, ...] | None) -> bool:
    """True without roots; else whether the path, links resolved, lies under one of them."""
    if roots is None:
        return True
    try:
        path = user_path(text).resolve()
    except (OSError, ValueError):  # ConfigError (an unknown ~user) is a ValueError
        return False
    return any(path.is_relative_to(root) for root in roots)


class Activity(BaseModel):
    """What a running search is doing inside a step: a screening rung, a generation's batch,
    the as-shipped scoring of the finalists and baselines, the held-out perplexity rows."""

    what: str = Field(description="e.g. 'stage metric, screen rung 1/2: scoring 324 candidates'")
    done: int
    total: int
    best_error: float | None = Field(description="lowest error among those done")
    elapsed_s: float
    eta_s: float | None = Field(description="seconds left in this step, from its pace so far")
    at: datetime = Field(description="when the runner wrote it")


class Progress(BaseModel):
    generation: int = Field(description="completed generations, across stages")
    total_generations: int
    evaluations: int
    best_error: float | None = Field(description="lowest reconstruction error so far")
    elapsed_s: float
    eta_s: float | None
    activity: Activity | None = Field(
        None, description="what a running search does now, between two generations"
    )


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


class ExportProgress(BaseModel):
    stage: str = Field(description="what the export is doing: pruning (and refitting), ...")
    done: int = Field(description="steps of this stage done (blocks, while pruning)")
    total: int
    eta_s: float | None = Field(description="seconds left in this stage, from its pace so far")


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
    progress: ExportProgress | None = Field(None, description="while running: how far it is")
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


# -- the checkpoint store (GET /api/stats; service.housekeeping) ----------------------------------
class StatusCounts(BaseModel):
    queued: int = 0
    running: int = 0
    succeeded: int = 0
    failed: int = 0
    cancelled: int = 0


class StoreUsage(BaseModel):
    recorded_bytes: int = Field(
        description="the succeeded checkpoints' archives (tar and compact) as the database "
        "records their sizes"
    )
    disk_bytes: int = Field(
        description="bytes on disk: the whole store folder (admin key or open API: staging "
        "folders included), else the caller's own archives"
    )
    archives: int = Field(description="tar archives on disk")
    compact_archives: int = Field(description="compact archives on disk (built on download)")
    staging_bytes: int = Field(
        description="runners' export staging folders (whole store only; else 0)"
    )


class RetentionRead(BaseModel):
    keep_checkpoints: int | None = Field(
        description="OPTISHEAR_KEEP_CHECKPOINTS: the newest N succeeded checkpoints are kept"
    )
    store_max_bytes: int | None = Field(
        description="OPTISHEAR_STORE_MAX_BYTES: the oldest are deleted beyond this size"
    )


class StatsRead(BaseModel):
    scope: Literal["all", "own"] = Field(
        description="all: every search (admin key or open API); own: the caller's"
    )
    store: StoreUsage
    searches: StatusCounts
    checkpoints: StatusCounts
    retention: RetentionRead
