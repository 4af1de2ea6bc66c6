"""Reads and writes the API needs, with keyword-only arguments; ORM rows in, schemas out."""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from optishear.recipe.candidates import ScoredCandidate
from service.db import utcnow
from service.schemas import (
    CandidateRead,
    CheckpointRead,
    ExportProgress,
    FrontRead,
    GenerationRead,
    PopulationMember,
    PopulationRead,
    Progress,
    SearchCreate,
    SearchOutcome,
    SearchRead,
)
from service.store import MISSING, CheckpointStore
from service.tables import FINISHED, CandidateRow, Checkpoint, Generation, JobStatus, Search


class IdempotencyConflictError(Exception):
    """The Idempotency-Key was used before with a different body."""


def search_read(search: Search) -> SearchRead:
    return SearchRead(
        id=search.id,
        status=search.status,  # type: ignore[arg-type]
        model=search.model,
        created_at=search.created_at,
        started_at=search.started_at,
        finished_at=search.finished_at,
        progress=Progress(
            generation=search.generations_done,
            total_generations=search.total_generations,
            evaluations=search.evaluations,
            best_error=search.best_error,
            elapsed_s=search.elapsed_s,
            eta_s=search.eta_s,
            activity=search.activity if search.status == JobStatus.RUNNING else None,
        ),
        attempts=search.attempts,
        cancel_requested=search.cancel_requested,
        error=search.error,
        request=SearchCreate.model_validate(search.request),
        result=outcome(search.result),
    )


def stored_scored(m: dict[str, Any]) -> dict[str, Any]:
    """A stored scored candidate in today's ScoredCandidate shape.

    Rows written before the one schema were flat ({key, genome, ratios, error, gap, ...});
    they are read as they are, never rewritten. Those written before the allocation stage
    have no `layer_sparsity`: empty, the blocks decide.
    """
    if "objectives" in m:
        return m if m.get("layer_sparsity") is not None else {**m, "layer_sparsity": []}
    gap = float(m.get("gap", 0.0))
    out = {
        "key": m.get("key", ""),
        "name": m.get("name"),
        "genome": m["genome"],
        "block_sparsity": m.get("ratios", []),
        "layer_sparsity": [],
        "objectives": {"error": m["error"], "gap": gap},
        "sparsity": m["sparsity"],
        "meets_target": m.get("meets_target", gap <= 1e-6),
        "n_samples": m.get("n_samples", 0),
    }
    if "on_front" in m:
        out["on_front"] = m["on_front"]
    return out


def outcome(result: dict[str, Any] | None) -> SearchOutcome | None:
    """A succeeded search's stored summary; older summaries' flat rows are read as today's."""
    if result is None:
        return None
    data = dict(result)
    data["baselines"] = [stored_scored(b) for b in data.get("baselines", [])]
    for name in ("refitted", "rescored"):  # older ones kept only key and error: not shown
        data[name] = [stored_scored(s) for s in data.get(name, []) if "genome" in s]
    return SearchOutcome.model_validate(data)


def create_search(
    *,
    session: Session,
    spec: SearchCreate,
    owner: str,
    idempotency_key: str | None,
    idempotency_ttl: float = 24 * 3600.0,
) -> tuple[Search, bool]:
    """Queue a search for `owner`; returns (search, created).

    A key repeated by the same owner with the same body, within `idempotency_ttl` seconds,
    returns the first search; an older key is released (its search runs on) for a new one."""
    fingerprint = spec.fingerprint()
    if idempotency_key is not None:
        _release_expired(session, owner, idempotency_key, idempotency_ttl)
        existing = _by_key(session, owner, idempotency_key, fingerprint)
        if existing is not None:
            return existing, False
    search = Search(
        id=uuid.uuid4(),
        owner=owner,
        model=spec.model,
        request=spec.model_dump(mode="json"),
        request_hash=fingerprint,
        idempotency_key=idempotency_key,
        total_generations=spec.total_generations(),
        status=JobStatus.QUEUED,
        generations_done=0,
        evaluations=0,
        elapsed_s=0.0,
        attempts=0,
        cancel_requested=False,
        created_at=utcnow(),
    )
    session.add(search)
    try:
        session.commit()
    except IntegrityError:  # the same key raced in from another request: return that one
        session.rollback()
        if idempotency_key is None:
            raise
        existing = _by_key(session, owner, idempotency_key, fingerprint)
        if existing is None:
            raise
        return existing, False
    return search, True


def _release_expired(session: Session, owner: str, key: str, ttl: float) -> None:
    session.execute(
        update(Search)
        .where(
            Search.owner == owner,
            Search.idempotency_key == key,
            Search.created_at < utcnow() - timedelta(seconds=ttl),
        )
        .values(idempotency_key=None)
        .execution_options(synchronize_session=False)
    )


def _by_key(session: Session, owner: str, key: str, fingerprint: str) -> Search | None:
    existing = session.scalars(
        select(Search).where(Search.owner == owner, Search.idempotency_key == key)
    ).first()
    if existing is not None and existing.request_hash != fingerprint:
        raise IdempotencyConflictError(key)
    return existing


def list_searches(
    *, session: Session, owner: str | None, status: str | None, limit: int, offset: int
) -> tuple[list[Search], int]:
    """A page of searches, newest first; `owner` None: everyone's."""
    # A search being deleted (service.housekeeping) is no longer listed.
    query = select(Search).where(Search.deleting_at.is_(None))
    count = select(func.count()).select_from(Search).where(Search.deleting_at.is_(None))
    if owner is not None:
        query = query.where(Search.owner == owner)
        count = count.where(Search.owner == owner)
    if status is not None:
        query = query.where(Search.status == status)
        count = count.where(Search.status == status)
    rows = session.scalars(
        query.order_by(Search.created_at.desc(), Search.id).limit(limit).offset(offset)
    ).all()
    return list(rows), int(session.scalar(count) or 0)


def request_cancel(*, session: Session, search: Search) -> bool:
    """Queued: cancelled at once. Running: flagged, the runner stops after this batch."""
    if search.status in FINISHED:
        return False
    now = utcnow()
    # Conditional updates: the runner may be changing the status at the same moment.
    done = session.execute(
        update(Search)
        .where(Search.id == search.id, Search.status == JobStatus.QUEUED)
        .values(status=JobStatus.CANCELLED, cancel_requested=True, finished_at=now)
        .execution_options(synchronize_session=False)
    ).rowcount
    if not done:
        done = session.execute(
            update(Search)
            .where(Search.id == search.id, Search.status == JobStatus.RUNNING)
            .values(cancel_requested=True)
            .execution_options(synchronize_session=False)
        ).rowcount
    session.commit()
    session.refresh(search)
    return bool(done)


def _fallback_methods(search: Search) -> dict[str, str]:
    stored = (search.result or {}).get("fallbacks", [])
    return {b["key"]: b["method"] for b in stored if b.get("method")}


def candidate_read(c: CandidateRow, methods: dict[str, str] | None = None) -> CandidateRead:
    """A stored row as the API shows it; `methods` names the published method of a baseline's
    row by its key (a baseline recommended instead of the search's candidates)."""
    method = (methods or {}).get(c.key)
    return CandidateRead(
        id=c.id,
        key=c.key,
        name=method,
        method=method,
        genome=c.genome,
        block_sparsity=c.block_sparsity,
        layer_sparsity=c.layer_sparsity or [],
        objectives={"error": c.error, "gap": c.gap},
        sparsity=c.sparsity,
        meets_target=c.meets_target,
        n_samples=c.n_samples,
        recommended=c.recommended,
    )


def front(*, session: Session, search: Search, generation: int | None) -> FrontRead | None:
    """The final front (finished search, no generation asked) or a generation's front."""
    if generation is None and search.status != JobStatus.SUCCEEDED:
        generation = search.generations_done or None
        if generation is None:
            return FrontRead(
                search_id=search.id, generation=None, candidates=[], recommended_id=None
            )
    rows = session.scalars(
        select(CandidateRow)
        .where(
            CandidateRow.search_id == search.id,
            CandidateRow.generation.is_(None)
            if generation is None
            else CandidateRow.generation == generation,
        )
        .order_by(CandidateRow.rank)
    ).all()
    if generation is not None and not rows:
        return None
    recommended = next((c.id for c in rows if c.recommended), None)
    return FrontRead(
        search_id=search.id,
        generation=generation,
        candidates=[candidate_read(c, _fallback_methods(search)) for c in rows],
        recommended_id=recommended,
        baselines=[
            ScoredCandidate.model_validate(stored_scored(b))
            for b in (search.result or {}).get("baselines", [])
        ],
    )


def population(
    *, session: Session, search: Search, generation: int | None
) -> PopulationRead | None:
    """A generation's whole population (default: the last one persisted); None: no such one."""
    number = generation if generation is not None else search.generations_done or None
    if number is None:
        return PopulationRead(search_id=search.id, generation=None, candidates=[])
    members = session.scalars(
        select(Generation.population)
        .where(Generation.search_id == search.id, Generation.number == number)
        .limit(1)
    ).all()
    if not members:
        return None
    return PopulationRead(
        search_id=search.id,
        generation=number,
        candidates=[PopulationMember.model_validate(stored_scored(m)) for m in members[0] or []],
    )


def generations(*, session: Session, search_id: uuid.UUID) -> list[GenerationRead]:
    rows = session.scalars(
        select(Generation).where(Generation.search_id == search_id).order_by(Generation.number)
    ).all()
    return [GenerationRead.model_validate(g, from_attributes=True) for g in rows]


def create_checkpoint(
    *, session: Session, search: Search, candidate: CandidateRow, store: CheckpointStore
) -> tuple[Checkpoint, bool]:
    """Queue an export; the candidate's live one (queued, running, or succeeded with its
    archive in the store) is returned instead. A unique index makes racing requests agree."""
    existing = _live_checkpoint(session, candidate.id)
    if existing is not None and _archive_lost(existing, store):
        # Its file went (deleted by hand): that export is over; a new one takes its place.
        session.execute(
            update(Checkpoint)
            .where(Checkpoint.id == existing.id, Checkpoint.status == JobStatus.SUCCEEDED)
            .values(status=JobStatus.FAILED, error=MISSING)
            .execution_options(synchronize_session=False)
        )
        existing = None
    if existing is not None:
        return existing, False
    ckpt = Checkpoint(
        id=uuid.uuid4(),
        search_id=search.id,
        candidate_id=candidate.id,
        status=JobStatus.QUEUED,
        attempts=0,
        created_at=utcnow(),
    )
    session.add(ckpt)
    try:
        session.commit()
    except IntegrityError:  # another request queued it in between: that one is the export
        session.rollback()
        existing = _live_checkpoint(session, candidate.id)
        if existing is None:
            raise
        return existing, False
    return ckpt, True


def _live_checkpoint(session: Session, candidate_id: uuid.UUID) -> Checkpoint | None:
    return session.scalars(
        select(Checkpoint)
        .where(
            Checkpoint.candidate_id == candidate_id,
            Checkpoint.status.in_([JobStatus.QUEUED, JobStatus.RUNNING, JobStatus.SUCCEEDED]),
            Checkpoint.deleting_at.is_(None),
        )
        .order_by(Checkpoint.created_at)
    ).first()


def _archive_lost(c: Checkpoint, store: CheckpointStore) -> bool:
    return c.status == JobStatus.SUCCEEDED and store.archive(c.id) is None


def checkpoint_read(c: Checkpoint, *, candidate_key: str, store: CheckpointStore) -> CheckpointRead:
    """An export as the API shows it: one whose archive left the store reads as failed."""
    lost = _archive_lost(c, store)
    ready = c.status == JobStatus.SUCCEEDED and not lost
    return CheckpointRead(
        id=c.id,
        search_id=c.search_id,
        candidate_id=c.candidate_id,
        candidate_key=candidate_key,
        status=JobStatus.FAILED if lost else c.status,  # type: ignore[arg-type]
        created_at=c.created_at,
        finished_at=c.finished_at,
        attempts=c.attempts,
        error=MISSING if lost else c.error,
        size_bytes=c.size_bytes,
        sha256=c.sha256,
        perplexity=c.perplexity,
        eval_tokens=c.eval_tokens,
        sparsity=c.sparsity,
        progress=_export_progress(c),
        download_url=f"/api/checkpoints/{c.id}/download" if ready else None,
    )


def _export_progress(c: Checkpoint) -> ExportProgress | None:
    if c.status != JobStatus.RUNNING or c.progress_stage is None:
        return None
    if c.progress_done is None or c.progress_total is None:
        return None
    return ExportProgress(
        stage=c.progress_stage, done=c.progress_done, total=c.progress_total, eta_s=c.eta_s
    )


def checkpoint(*, session: Session, ckpt: Checkpoint, store: CheckpointStore) -> CheckpointRead:
    """One export, with the key of the candidate it exports."""
    key = session.scalar(select(CandidateRow.key).where(CandidateRow.id == ckpt.candidate_id))
    return checkpoint_read(ckpt, candidate_key=key or "", store=store)


def checkpoints(
    *, session: Session, search_id: uuid.UUID, store: CheckpointStore
) -> list[CheckpointRead]:
    """A search's exports, oldest first: every status, so retries and failures show too."""
    rows = session.execute(
        select(Checkpoint, CandidateRow.key)
        .join(CandidateRow, CandidateRow.id == Checkpoint.candidate_id)
        .where(Checkpoint.search_id == search_id, Checkpoint.deleting_at.is_(None))
        .order_by(Checkpoint.created_at, Checkpoint.id)
    ).all()
    return [checkpoint_read(c, candidate_key=key, store=store) for c, key in rows]
