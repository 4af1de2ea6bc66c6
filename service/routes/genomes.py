"""Stored genomes: each succeeded search's best, by architecture family, pattern and target."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, status

from optishear.core.errors import ConfigError
from optishear.core.patterns import Pattern
from service import genomes
from service.deps import PrincipalDep, SessionDep
from service.responses import ValidationProblem
from service.schemas import GenomePage

router = APIRouter(prefix="/genomes", tags=["genomes"])


@router.get("", responses={422: {"model": ValidationProblem, "description": "a bad filter"}})
def list_genomes(
    session: SessionDep,
    principal: PrincipalDep,
    family: Annotated[
        str | None,
        Query(
            min_length=1,
            max_length=64,
            pattern=r"^[A-Za-z0-9_.-]+$",
            description="architecture family, config.json's model_type: llama, qwen2, ...",
        ),
    ] = None,
    pattern: Annotated[
        str | None,
        Query(
            min_length=1,
            max_length=32,
            pattern=r"^\s*(unstructured|[0-9]+\s*:\s*[0-9]+)\s*$",
            description="unstructured, 2:4, ... (0 < N < M)",
        ),
    ] = None,
    target: Annotated[float | None, Query(gt=0, lt=1, description="target sparsity")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    offset: Annotated[int, Query(ge=0, le=10**9)] = 0,
) -> GenomePage:
    """Newest search first, best genome first within each (rank 0: the recommended one's).
    Those of the caller's own searches (an admin key: everyone's).

    Any of them goes into a new search as `metric_from` (`{"search": id, "use": "seed"}` or
    `"fixed"`), or by its `spec` into `seed_genomes` or `genome`.
    """
    try:
        parsed = Pattern.parse(pattern) if pattern is not None else None
    except ConfigError as exc:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(exc)) from exc
    return genomes.list_genomes(
        session=session,
        family=family,
        pattern=parsed,
        target=target,
        limit=limit,
        offset=offset,
        owner=None if principal.admin else principal.owner,
    )
