"""A finished front-across-sparsities search written straight into the DB, as the runner stores
it (its own row builders), for API and dashboard tests that need no runner."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from optishear.recipe.candidates import Scored, SearchSummary
from service import db
from service.genomes import genome_rows
from service.runner.rows import candidate_rows, population_json
from service.schemas import SearchCreate
from service.tables import CandidateRow, Checkpoint, Generation, JobStatus, Search

# (front index, status, held-out perplexity, measured sparsity)
CheckpointSeed = tuple[int, str, float | None, float | None]


def seed_front_search(
    settings: Any,
    front: Sequence[Scored],
    *,
    recommended: int = 0,
    population: list[dict[str, Any]] | None = None,
    checkpoints: Sequence[CheckpointSeed] = (),
    request: SearchCreate | None = None,
    family: str = "llama",
    owner: str = "",
    fallback: str = "",
) -> tuple[uuid.UUID, list[CandidateRow]]:
    """A succeeded search (default: an allocation search) with `front` (final and generation
    1), its best genomes (of `family`) and `checkpoints`, created in this order; returns its id
    and the final front's rows."""
    sid = uuid.uuid4()
    request = request or SearchCreate(
        model="m",
        stages="allocation",
        allocation={"front": [0.4, 0.7], "selection": "nsga3"},
        generations=1,
    )
    rows = candidate_rows(sid, None, front, front[recommended].candidate.label())
    summary = SearchSummary(
        recommended_key=rows[recommended].key, evaluations=4, cache_hits=0, search_seconds=1.0
    )
    genomes = genome_rows(
        search_id=sid,
        request=request,
        summary=summary,
        listed=[s.record() for s in front],
        family=family,
    )
    evaluations = 4 * len(front)
    now = datetime.now(UTC)
    engine = db.make_engine(settings.resolved_database_url())
    try:
        with db.make_sessions(engine, write=True).begin() as session:
            session.add(
                Search(
                    id=sid,
                    owner=owner,
                    model=request.model,
                    request=request.model_dump(mode="json"),
                    request_hash="h",
                    total_generations=request.total_generations(),
                    status=JobStatus.SUCCEEDED,
                    generations_done=1,
                    evaluations=evaluations,
                    elapsed_s=1.0,
                    attempts=1,
                    cancel_requested=False,
                    created_at=now,
                    result={
                        "recommended_id": str(rows[recommended].id),
                        "recommended_key": rows[recommended].key,
                        "evaluations": evaluations,
                        "cache_hits": 0,
                        "search_seconds": 1.0,
                        "fallback": fallback,
                    },
                )
            )
            session.flush()  # the search row first: the generation refers to it
            session.add(
                Generation(
                    search_id=sid,
                    number=1,
                    stage="allocation",
                    stage_generation=1,
                    evaluations=evaluations,
                    total_evaluations=evaluations,
                    best_error=min(s.evaluation.error for s in front),
                    seconds=1.0,
                    elapsed_s=1.0,
                    population=population_json(front, front) if population is None else population,
                )
            )
            session.add_all(rows + candidate_rows(sid, 1, front, None) + genomes)
            session.flush()
            for i, (index, status, ppl, sparsity) in enumerate(checkpoints):
                done = status == JobStatus.SUCCEEDED
                ckpt_id = uuid.uuid4()
                archive = _archive(settings, ckpt_id) if done else None
                session.add(
                    Checkpoint(
                        id=ckpt_id,
                        search_id=sid,
                        candidate_id=rows[index].id,
                        status=status,
                        attempts=1,
                        created_at=now + timedelta(seconds=i),
                        finished_at=now + timedelta(seconds=i) if done else None,
                        perplexity=ppl,
                        sparsity=sparsity,
                        eval_tokens=128 if ppl is not None else None,
                        size_bytes=len(archive) if archive else None,
                        sha256=hashlib.sha256(archive).hexdigest() if archive else None,
                        file_name=f"{ckpt_id}.tar" if done else None,
                    )
                )
    finally:
        engine.dispose()
    return sid, rows


def _archive(settings: Any, ckpt_id: uuid.UUID) -> bytes:
    """A stand-in archive in the store (distinct bytes per export), as the runner leaves one."""
    data = (f"optishear checkpoint {ckpt_id}\n" * 200).encode()
    (settings.resolved_checkpoint_dir() / f"{ckpt_id}.tar").write_bytes(data)
    return data
