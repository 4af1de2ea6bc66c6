"""Genomes that transfer: a succeeded search's best genomes, stored, listed and reused.

The runner stores them (`genome_rows`) when it marks a search succeeded; `POST /api/searches`
and `optishear run --metric-from` expand a request's `metric_from` with `apply_metric_from`,
so that the stored request is a plain config and the runner needs nothing new.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence

from pydantic import ValidationError
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from optishear.config import config_error
from optishear.core.errors import ConfigError
from optishear.core.genome import Genome
from optishear.core.patterns import Pattern
from optishear.recipe.candidates import ScoredCandidate, SearchSummary
from service.auth import OPEN, Principal
from service.db import utcnow
from service.schemas import GenomeOrigin, GenomePage, GenomeRef, SearchCreate, StoredGenomeRead
from service.tables import JobStatus, Search, SearchGenome

MAX_GENOMES = 8  # per search: enough to seed a population, few enough to stay meaningful
TARGET_TOLERANCE = 1e-9  # targets are written as the request gave them: equal up to rounding


class MetricSourceError(ConfigError):
    """metric_from names a search whose genomes cannot be used; `status_code` for the API."""

    status_code = 422


class MetricSourceNotReadyError(MetricSourceError):
    """The source search exists but has stored no genomes (it has not succeeded)."""

    status_code = 409


def best_genomes(
    summary: SearchSummary, listed: Sequence[ScoredCandidate], limit: int = MAX_GENOMES
) -> list[tuple[ScoredCandidate, GenomeOrigin]]:
    """The best distinct genomes of a finished search, best first, with where each error is from.

    The recommended candidate's genome comes first; then the finalists (pruned as shipped,
    best first), then the final front and finalists as the engine scored them, by error.
    Errors of different origins are not comparable, so the order is by origin first. Genomes
    in one row-canonical class give identical masks: only the first of a class is kept.
    """
    finalists = summary.refitted or summary.rescored
    recommended = next((c for c in (*finalists, *listed) if c.key == summary.recommended_key), None)
    ordered: list[tuple[ScoredCandidate, GenomeOrigin]] = []
    if recommended is not None:
        ordered.append((recommended, "recommended"))
    by_error = sorted(finalists, key=lambda c: c.objectives.error)
    ordered += [(c, "finalist") for c in by_error]
    ordered += [(c, "front") for c in sorted(listed, key=lambda c: c.objectives.error)]
    kept: list[tuple[ScoredCandidate, GenomeOrigin]] = []
    classes: set[int] = set()
    for c, origin in ordered:
        cls = Genome.from_index(c.genome.index).row_canonical().index
        if cls not in classes:
            classes.add(cls)
            kept.append((c, origin))
    return kept[:limit]


def genome_rows(
    *,
    search_id: uuid.UUID,
    request: SearchCreate,
    summary: SearchSummary,
    listed: Sequence[ScoredCandidate],
    family: str,
) -> list[SearchGenome]:
    """The rows the runner writes with the search's success (`listed`: its final front rows)."""
    now = utcnow()
    rows = []
    for rank, (c, origin) in enumerate(best_genomes(summary, listed)):
        genome = Genome.from_index(c.genome.index)
        rows.append(
            SearchGenome(
                search_id=search_id,
                rank=rank,
                origin=origin,
                genome_index=genome.index,
                spec=genome.spec(),
                formula=genome.formula(),
                error=c.objectives.error,
                family=family,
                pattern=str(request.pattern),
                target=request.target,
                created_at=now,
            )
        )
    return rows


def stored_genomes(*, session: Session, search_id: uuid.UUID) -> list[SearchGenome]:
    return list(
        session.scalars(
            select(SearchGenome)
            .where(SearchGenome.search_id == search_id)
            .order_by(SearchGenome.rank)
        ).all()
    )


def apply_metric_from(
    *, session: Session, spec: SearchCreate, principal: Principal = OPEN
) -> SearchCreate:
    """`spec` with its metric_from expanded into seed_genomes, or into genome + stages.

    Only a search `principal` may see can be named (another key's reads as unknown).

    Raises MetricSourceError (422: unknown search, or a use that does not fit the request)
    or MetricSourceNotReadyError (409: the search has not succeeded, so it stored nothing).
    """
    source = spec.metric_from
    if source is None:
        return spec
    row = session.get(Search, source.search)
    if row is None or not principal.sees(row.owner) or row.deleting_at is not None:
        raise MetricSourceError(f"metric_from.search: no search {source.search}")
    stored = stored_genomes(session=session, search_id=source.search)
    if not stored:
        why = (
            "succeeded before genomes were stored"
            if row.status == JobStatus.SUCCEEDED
            else f"is {row.status}: only a succeeded search stores genomes"
        )
        raise MetricSourceNotReadyError(f"metric_from.search: search {source.search} {why}")
    best = Genome.from_index(stored[0].genome_index)
    if source.use == "fixed" and spec.pattern.structured:
        raise MetricSourceError(
            f"metric_from use 'fixed' searches only the per-block plan, and an {spec.pattern} "
            "pattern keeps every block at N/M, so there is nothing left to search: prune with "
            f"the genome instead (optishear prune --method meta --genome '{best.spec()}'), or "
            "use 'seed'"
        )
    if source.use == "seed" and not spec.metric_stages():
        raise MetricSourceError(
            f"metric_from use 'seed' seeds a metric search, and stages {spec.stages!r} search "
            "no metric: use stages metric, both or joint, or use 'fixed'"
        )
    genomes = [Genome.from_index(g.genome_index) for g in stored]
    body = spec.model_dump(mode="json")
    if source.use == "seed":
        # The stored ones first; a resubmitted expanded request gets no duplicates.
        seeds = genomes + [g for g in spec.seed_genomes if g not in genomes]
        body["seed_genomes"] = [g.spec() for g in seeds]
    else:
        body["genome"] = best.spec()
        body["stages"] = "layerwise"
    try:
        return SearchCreate.model_validate(body)  # every rule again, on the expanded config
    except ValidationError as exc:
        raise config_error(exc) from None


def genome_read(g: SearchGenome) -> StoredGenomeRead:
    return StoredGenomeRead(
        search_id=g.search_id,
        family=g.family,
        pattern=g.pattern,
        target=g.target,
        rank=g.rank,
        origin=g.origin,  # type: ignore[arg-type]
        genome=GenomeRef(index=g.genome_index, spec=g.spec, formula=g.formula),
        error=g.error,
        created_at=g.created_at,
    )


def list_genomes(
    *,
    session: Session,
    family: str | None,
    pattern: Pattern | None,
    target: float | None,
    limit: int,
    offset: int,
    owner: str | None = None,
) -> GenomePage:
    """Stored genomes, newest search first and best first within each search; `owner`
    given: only those of its searches."""
    # Only searches no delete has started on (service.housekeeping), and `owner`'s.
    searches = select(Search.id).where(Search.deleting_at.is_(None))
    if owner is not None:
        searches = searches.where(Search.owner == owner)
    where = [SearchGenome.search_id.in_(searches)]
    if family is not None:
        where.append(SearchGenome.family == family.strip().lower())
    if pattern is not None:
        where.append(SearchGenome.pattern == str(pattern))
    if target is not None:
        where.append(
            SearchGenome.target.between(target - TARGET_TOLERANCE, target + TARGET_TOLERANCE)
        )
    rows = session.scalars(
        select(SearchGenome)
        .where(*where)
        .order_by(SearchGenome.created_at.desc(), SearchGenome.search_id, SearchGenome.rank)
        .limit(limit)
        .offset(offset)
    ).all()
    total = session.scalar(select(func.count()).select_from(SearchGenome).where(*where))
    return GenomePage(
        items=[genome_read(g) for g in rows], total=int(total or 0), limit=limit, offset=offset
    )
