"""Database tables (SQLAlchemy 2 typed ORM): searches, generations, candidates, checkpoints,
search genomes, runners."""

from __future__ import annotations

import uuid
from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    Uuid,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, deferred, mapped_column

from service.db import UTCDateTime, utcnow

JSONType = JSON().with_variant(JSONB(), "postgresql")
# Python None as SQL NULL (plain JSON columns would store a JSON 'null').
NullableJSON = JSON(none_as_null=True).with_variant(JSONB(none_as_null=True), "postgresql")


class Base(DeclarativeBase):
    metadata = MetaData(
        naming_convention={
            "ix": "ix_%(column_0_label)s",
            "uq": "uq_%(table_name)s_%(column_0_name)s",
            "ck": "ck_%(table_name)s_%(constraint_name)s",
            "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
            "pk": "pk_%(table_name)s",
        }
    )


class JobStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


FINISHED = (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED)


class _Job:
    """Columns every queued job has: status, lease and attempts."""

    status: Mapped[str] = mapped_column(String(16), default=JobStatus.QUEUED, index=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    lease_owner: Mapped[str | None] = mapped_column(String(128))
    lease_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    error: Mapped[str | None] = mapped_column(Text)


class Search(_Job, Base):
    __tablename__ = "searches"
    __table_args__ = (
        # Idempotency keys are per owner: two API keys may pick the same one.
        UniqueConstraint("owner", "idempotency_key", name="uq_searches_owner_idempotency_key"),
        Index("ix_searches_owner_created_at", "owner", "created_at"),
    )

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    # The sha256 digest of the API key that made it; '' in open mode (no keys configured).
    owner: Mapped[str] = mapped_column(String(64), default="", server_default="")
    model: Mapped[str] = mapped_column(String(1024))
    request: Mapped[dict[str, Any]] = mapped_column(JSONType)
    request_hash: Mapped[str] = mapped_column(String(64))
    idempotency_key: Mapped[str | None] = mapped_column(String(255))
    total_generations: Mapped[int] = mapped_column(Integer)
    generations_done: Mapped[int] = mapped_column(Integer, default=0)
    evaluations: Mapped[int] = mapped_column(Integer, default=0)
    best_error: Mapped[float | None] = mapped_column(Float)
    elapsed_s: Mapped[float] = mapped_column(Float, default=0.0)
    eta_s: Mapped[float | None] = mapped_column(Float)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    # What a running search is doing between two generations (a screening rung, the as-shipped
    # scoring, the held-out rows): service.schemas.Activity, written every few seconds.
    activity: Mapped[dict[str, Any] | None] = mapped_column(NullableJSON)
    # The library's serialized search state after the last persisted generation: any runner,
    # on any machine, resumes from it. Deferred: status polls never load it.
    state: Mapped[bytes | None] = deferred(mapped_column(LargeBinary))
    result: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    # Set when a delete starts (service.housekeeping): the API shows it no more, and whoever
    # finishes the delete removes its files, then its rows.
    deleting_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class Generation(Base):
    __tablename__ = "generations"
    __table_args__ = (UniqueConstraint("search_id", "number"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    search_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("searches.id", ondelete="CASCADE"), index=True
    )
    number: Mapped[int] = mapped_column(Integer)  # 1-based, across stages
    stage: Mapped[str] = mapped_column(String(16))
    stage_generation: Mapped[int] = mapped_column(Integer)
    evaluations: Mapped[int] = mapped_column(Integer)  # in this generation
    total_evaluations: Mapped[int] = mapped_column(Integer)
    best_error: Mapped[float] = mapped_column(Float)
    seconds: Mapped[float] = mapped_column(Float)
    elapsed_s: Mapped[float] = mapped_column(Float)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # Every distinct candidate of the population after this generation (its front is a
    # subset): ScoredCandidate records with `on_front` (older rows: flat). One JSON
    # value, written with the generation and only read whole, for plotting. None: a
    # generation persisted before populations were kept.
    population: Mapped[list[dict[str, Any]] | None] = deferred(mapped_column(JSONType))


class CandidateRow(Base):
    """A front member: of one generation (`generation` = its number) or final (None)."""

    __tablename__ = "candidates"
    __table_args__ = (Index("ix_candidates_search_generation", "search_id", "generation"),)

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    search_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("searches.id", ondelete="CASCADE"))
    generation: Mapped[int | None] = mapped_column(Integer)
    key: Mapped[str] = mapped_column(String(64))  # genome index and plan hash
    rank: Mapped[int] = mapped_column(Integer)  # order on the front (target met, then error)
    genome: Mapped[dict[str, Any]] = mapped_column(JSONType)
    block_sparsity: Mapped[list[float]] = mapped_column("ratios", JSONType)
    # One sparsity per linear layer (the allocation stage); None: the blocks decide (and
    # every row written before the column existed).
    layer_sparsity: Mapped[list[float] | None] = mapped_column(NullableJSON)
    error: Mapped[float] = mapped_column(Float)
    sparsity: Mapped[float] = mapped_column(Float)
    gap: Mapped[float] = mapped_column(Float)
    meets_target: Mapped[bool] = mapped_column(Boolean)
    n_samples: Mapped[int] = mapped_column(Integer)
    recommended: Mapped[bool] = mapped_column(Boolean, default=False)


class SearchGenome(Base):
    """One of a succeeded search's best distinct genomes, kept to seed (or fix the metric of)
    later searches on the same architecture family, pattern and target."""

    __tablename__ = "search_genomes"
    __table_args__ = (
        UniqueConstraint("search_id", "rank"),
        Index("ix_search_genomes_family_pattern", "family", "pattern"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    search_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("searches.id", ondelete="CASCADE"))
    rank: Mapped[int] = mapped_column(Integer)  # 0: the recommended candidate's genome
    # where its error comes from: 'recommended', 'finalist' (as shipped) or 'front' (engine)
    origin: Mapped[str] = mapped_column(String(16))
    genome_index: Mapped[int] = mapped_column(Integer)
    spec: Mapped[str] = mapped_column(String(256))
    formula: Mapped[str] = mapped_column(String(1024))
    error: Mapped[float] = mapped_column(Float)
    family: Mapped[str] = mapped_column(String(64))  # config.json's model_type, or 'unknown'
    pattern: Mapped[str] = mapped_column(String(32))
    target: Mapped[float] = mapped_column(Float)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


ACTIVE_EXPORT = "status IN ('queued', 'running', 'succeeded') AND deleting_at IS NULL"


class Checkpoint(_Job, Base):
    __tablename__ = "checkpoints"
    __table_args__ = (
        # One live export per candidate, however many requests race (a failed one may be redone).
        Index(
            "ux_checkpoints_active_candidate",
            "candidate_id",
            unique=True,
            postgresql_where=text(ACTIVE_EXPORT),
            sqlite_where=text(ACTIVE_EXPORT),
        ),
    )

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    search_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("searches.id", ondelete="CASCADE"), index=True
    )
    candidate_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("candidates.id", ondelete="CASCADE"), index=True
    )
    file_name: Mapped[str | None] = mapped_column(String(255))  # inside the checkpoint store
    size_bytes: Mapped[int | None] = mapped_column(BigInteger)
    sha256: Mapped[str | None] = mapped_column(String(64))
    perplexity: Mapped[float | None] = mapped_column(Float)
    eval_tokens: Mapped[int | None] = mapped_column(Integer)
    sparsity: Mapped[float | None] = mapped_column(Float)
    # While it runs: blocks pruned (and refit) of how many, what it is doing, seconds left.
    progress_done: Mapped[int | None] = mapped_column(Integer)
    progress_total: Mapped[int | None] = mapped_column(Integer)
    progress_stage: Mapped[str | None] = mapped_column(String(64))
    eta_s: Mapped[float | None] = mapped_column(Float)
    # Housekeeping (migration 0008): a delete in progress, and the compact archive
    # (`<id>.compact`, built on the first ?format=compact download) once it is in the store.
    deleting_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    compact_bytes: Mapped[int | None] = mapped_column(BigInteger)
    compact_sha256: Mapped[str | None] = mapped_column(String(64))


class RunnerRow(Base):
    """A runner process: its heartbeat tells /readyz that someone works the queue."""

    __tablename__ = "runners"

    id: Mapped[str] = mapped_column(String(128), primary_key=True)
    hostname: Mapped[str] = mapped_column(String(255))
    pid: Mapped[int] = mapped_column(Integer)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    heartbeat_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
    job: Mapped[str | None] = mapped_column(String(64))


class Measurement(_Job, Base):
    """A measurement of an exported checkpoint, queued like an export: downstream task
    accuracy (lm-evaluation-harness) or prefill/decode speed against the dense model."""

    __tablename__ = "measurements"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    checkpoint_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("checkpoints.id", ondelete="CASCADE"), index=True
    )
    kind: Mapped[str] = mapped_column(String(16))  # "tasks" or "speed"
    request: Mapped[dict[str, Any]] = mapped_column(JSONType)
    result: Mapped[dict[str, Any] | None] = mapped_column(NullableJSON)
