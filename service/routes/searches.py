"""Searches: submit, list, read, front, population, generations, cancel, delete, export,
exports."""

from __future__ import annotations

import logging
import uuid
from typing import Annotated, Literal

from fastapi import APIRouter, Body, Depends, Header, HTTPException, Query, Response, status
from fastapi.concurrency import run_in_threadpool
from sqlalchemy import select
from sqlalchemy.orm import Session

from optishear.core.errors import ConfigError
from optishear.core.settings import LibrarySettings
from service import genomes, repository
from service.auth import Principal
from service.deps import (
    HousekeepingDep,
    PrincipalDep,
    SessionDep,
    SessionsDep,
    SettingsDep,
    StatusCacheDep,
    StoreDep,
    WriteSessionDep,
    deleted,
    get_or_404,
    visible_or_404,
)
from service.responses import RETRY_AFTER, ValidationProblem
from service.schemas import (
    CheckpointCreate,
    CheckpointRead,
    FrontRead,
    GenerationRead,
    Message,
    PopulationRead,
    SearchCreate,
    SearchPage,
    SearchRead,
)
from service.store import UNAVAILABLE
from service.tables import CandidateRow, JobStatus, Search

logger = logging.getLogger(__name__)

router = APIRouter(prefix="/searches", tags=["searches"])
NOT_FOUND = {404: {"model": Message, "description": "no search with this id"}}


def search_or_404(search_id: uuid.UUID, session: SessionDep, principal: PrincipalDep) -> Search:
    return _visible_search(session, search_id, principal)


def _visible_search(session: Session, search_id: uuid.UUID, principal: Principal) -> Search:
    search = get_or_404(session, Search, search_id, "search")
    visible_or_404(principal, search.owner, "search", search_id)
    if search.deleting_at is not None:  # a delete has started (service.housekeeping)
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"search {search_id} not found")
    return search


def search_for_write(
    search_id: uuid.UUID, session: WriteSessionDep, principal: PrincipalDep
) -> Search:
    # Locked (Postgres; SQLite's write transactions are serial anyway): a delete of this
    # search and this request take turns, so no export is queued for a search being deleted.
    session.get(Search, search_id, with_for_update=True)
    return search_or_404(search_id, session, principal)


SearchDep = Annotated[Search, Depends(search_or_404)]
WritableSearchDep = Annotated[Search, Depends(search_for_write)]
IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        min_length=1,
        max_length=255,
        pattern=r"^[\x21-\x7e]+$",
        description="retries with the same key and body return the same search",
    ),
]


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    responses={
        200: {"model": SearchRead, "description": "a retry: the search this key created"},
        409: {"model": Message, "description": "metric_from names a search that has not succeeded"},
        422: {
            "model": ValidationProblem,
            "description": "invalid settings, a reused key, or a metric_from that names no "
            "search or does not fit the request (use 'fixed' under an N:M pattern)",
        },
    },
)
def submit_search(
    spec: SearchCreate,
    session: WriteSessionDep,
    settings: SettingsDep,
    principal: PrincipalDep,
    response: Response,
    idempotency_key: IdempotencyKey = None,
) -> SearchRead:
    """Validate and queue a search; it starts when a runner claims it.

    With `metric_from`, the stored request is the expanded one: `seed_genomes` begin with the
    source search's best genomes (use 'seed'), or its best genome is `genome` and `stages` is
    'layerwise' (use 'fixed'); `metric_from` stays in it as the record of where they came from.
    """
    try:
        spec.validate_sources(LibrarySettings(), roots=settings.resolved_data_roots())
        spec = genomes.apply_metric_from(session=session, spec=spec, principal=principal)
    except genomes.MetricSourceError as exc:
        raise HTTPException(exc.status_code, str(exc)) from exc
    except ConfigError as exc:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(exc)) from exc
    try:
        search, created = repository.create_search(
            session=session,
            spec=spec,
            owner=principal.owner,
            idempotency_key=idempotency_key,
            idempotency_ttl=settings.idempotency_ttl_seconds,
        )
    except repository.IdempotencyConflictError as exc:
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT,
            "this Idempotency-Key was used with a different request body",
        ) from exc
    if not created:
        response.status_code = status.HTTP_200_OK
    return repository.search_read(search)


@router.get("")
def list_searches(
    session: SessionDep,
    principal: PrincipalDep,
    status_: Annotated[
        Literal["queued", "running", "succeeded", "failed", "cancelled"] | None,
        Query(alias="status"),
    ] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    offset: Annotated[int, Query(ge=0, le=10**9)] = 0,
) -> SearchPage:
    """Newest first: the caller's own searches (an admin key: everyone's)."""
    rows, total = repository.list_searches(
        session=session,
        owner=None if principal.admin else principal.owner,
        status=status_,
        limit=limit,
        offset=offset,
    )
    return SearchPage(
        items=[repository.search_read(s) for s in rows], total=total, limit=limit, offset=offset
    )


@router.get("/{search_id}", response_model=SearchRead, responses=NOT_FOUND)
async def read_search(
    search_id: uuid.UUID, principal: PrincipalDep, sessions: SessionsDep, cache: StatusCacheDep
) -> Response:
    """Status, progress (generation k of n, evaluations, best error, elapsed, ETA), error.

    Answered from a copy at most OPTISHEAR_STATUS_CACHE_SECONDS old (service.status_cache).
    """
    cached = cache.get(search_id)
    if cached is not None:
        visible_or_404(principal, cached.owner, "search", search_id)
        return Response(cached.body, media_type="application/json")

    # A miss reads the session, the row and the record in one trip to a worker thread, where
    # the sync dependencies took five (bench/HISTORY.md, "Status polls").
    def read() -> tuple[str, bytes]:
        with sessions() as session:
            search = _visible_search(session, search_id, principal)
            return search.owner, repository.search_read(search).model_dump_json().encode()

    owner, body = await run_in_threadpool(read)
    cache.put(search_id, owner, body)
    return Response(body, media_type="application/json")


@router.get("/{search_id}/front", responses=NOT_FOUND)
def read_front(
    search: SearchDep,
    session: SessionDep,
    generation: Annotated[int | None, Query(ge=1, le=10**6)] = None,
) -> FrontRead:
    """The Pareto front: final when finished, else the latest generation's (or `generation`)."""
    front = repository.front(session=session, search=search, generation=generation)
    if front is None:
        raise HTTPException(
            status.HTTP_404_NOT_FOUND,
            f"search {search.id} has no generation {generation} "
            f"({search.generations_done} completed)",
        )
    return front


@router.get("/{search_id}/candidates", responses=NOT_FOUND)
def read_population(
    search: SearchDep,
    session: SessionDep,
    generation: Annotated[int | None, Query(ge=1, le=10**6)] = None,
) -> PopulationRead:
    """Every evaluated candidate of a generation's population (default: the last generation).

    The front is the non-dominated part of it (`on_front`); with the exact-target repair every
    gap is 0, so the population shows what the front alone cannot: the spread of errors.
    """
    found = repository.population(session=session, search=search, generation=generation)
    if found is None:
        raise HTTPException(
            status.HTTP_404_NOT_FOUND,
            f"search {search.id} has no generation {generation} "
            f"({search.generations_done} completed)",
        )
    return found


@router.get("/{search_id}/generations", responses=NOT_FOUND)
def read_generations(search: SearchDep, session: SessionDep) -> list[GenerationRead]:
    """Per-generation summaries, for plotting progress."""
    return repository.generations(session=session, search_id=search.id)


@router.post(
    "/{search_id}/cancel",
    status_code=status.HTTP_202_ACCEPTED,
    responses={**NOT_FOUND, 409: {"model": Message, "description": "already finished"}},
)
def cancel_search(
    search: WritableSearchDep, session: WriteSessionDep, cache: StatusCacheDep
) -> SearchRead:
    """Queued searches end at once; running ones after the current batch of evaluations."""
    cache.drop(search.id)
    if not repository.request_cancel(session=session, search=search):
        raise HTTPException(
            status.HTTP_409_CONFLICT, f"search {search.id} has already finished ({search.status})"
        )
    return repository.search_read(search)


@router.delete(
    "/{search_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    responses={
        **NOT_FOUND,
        204: {"description": "deleted, with its checkpoints and their archives"},
        409: {"model": Message, "description": "queued or running (cancel it first), or exporting"},
    },
)
def delete_search(
    search_id: uuid.UUID,
    principal: PrincipalDep,
    housekeeping: HousekeepingDep,
    cache: StatusCacheDep,
) -> Response:
    """Delete a finished search: its generations, front, stored genomes, checkpoints and their
    archives (the disk is reclaimed). Cancel a queued or running search first."""
    try:
        return deleted(housekeeping.delete_search, search_id, principal)
    finally:
        cache.drop(search_id)  # after the delete: no poll in between left a copy behind


@router.post(
    "/{search_id}/checkpoints",
    status_code=status.HTTP_202_ACCEPTED,
    responses={
        **NOT_FOUND,
        200: {"model": CheckpointRead, "description": "this candidate's existing export"},
        409: {"model": Message, "description": "the search has not succeeded"},
    },
)
def create_checkpoint(
    search: WritableSearchDep,
    session: WriteSessionDep,
    store: StoreDep,
    response: Response,
    body: Annotated[CheckpointCreate | None, Body()] = None,
) -> CheckpointRead:
    """Queue the export of a front candidate (default: the recommended one)."""
    if search.status != JobStatus.SUCCEEDED:
        raise HTTPException(
            status.HTTP_409_CONFLICT,
            f"search {search.id} is {search.status}: checkpoints need a succeeded search",
        )
    query = select(CandidateRow).where(CandidateRow.search_id == search.id)
    if body is not None and body.candidate_id is not None:
        query = query.where(CandidateRow.id == body.candidate_id)
    else:
        query = query.where(CandidateRow.generation.is_(None), CandidateRow.recommended.is_(True))
    candidate = session.scalars(query).first()
    if candidate is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"search {search.id} has no such candidate")
    if (problem := store.problem()) is not None:
        logger.error("checkpoint store: %s", problem)
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, UNAVAILABLE, headers=RETRY_AFTER)
    ckpt, created = repository.create_checkpoint(
        session=session, search=search, candidate=candidate, store=store
    )
    if not created:
        response.status_code = status.HTTP_200_OK
    return repository.checkpoint_read(ckpt, candidate_key=candidate.key, store=store)


@router.get("/{search_id}/checkpoints", responses=NOT_FOUND)
def read_checkpoints(
    search: SearchDep, session: SessionDep, store: StoreDep
) -> list[CheckpointRead]:
    """The search's checkpoint exports, oldest first, each with its candidate's key, status,
    measured sparsity and held-out perplexity (once succeeded): the shipped side of a front."""
    return repository.checkpoints(session=session, search_id=search.id, store=store)
