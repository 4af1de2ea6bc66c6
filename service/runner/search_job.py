"""A search job: run the library's search, one DB transaction per completed generation.

Every completed generation is written in one transaction (its summary, population, front and
the search's JSON state), guarded by the lease, so a runner that lost its job never writes
into it and a runner that resumes it continues after the last persisted generation. Through a
DB outage each write is retried (retry.py); a generation already stored is never stored again.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
import uuid
from collections.abc import Iterator

from sqlalchemy import select, update
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, undefer

from optishear.core.heartbeat import Activity
from optishear.data import assets
from optishear.model.hf import load_tokenizer
from optishear.model.sources import model_family
from optishear.recipe.comparison import held_out_ids
from optishear.search.engine_spec import EngineSpec
from optishear.search.evaluator import BatchEvaluator, InProcessEvaluator
from optishear.search.loop import run_search
from optishear.search.results import GenerationSnapshot
from service import queue
from service.db import utcnow
from service.genomes import genome_rows
from service.runner import retry
from service.runner.context import JobContext
from service.runner.errors import CancelledError, LeaseLostError, StoppedError
from service.runner.rows import candidate_rows, population_json
from service.schemas import Activity as ActivityRead
from service.schemas import SearchCreate, SearchOutcome
from service.tables import Generation, JobStatus, Search

logger = logging.getLogger(__name__)


def ensure_assets(runner: JobContext, request: SearchCreate, *, evaluation: bool) -> None:
    """The bundled model and text this job names, fetched once on this runner's machine."""
    texts = (request.calibration.source, request.evaluation.text if evaluation else None)
    assets.ensure_assets(runner.library, model=request.model, texts=texts)


@contextlib.contextmanager
def evaluator_for(runner: JobContext, request: SearchCreate) -> Iterator[BatchEvaluator]:
    """In this process (OPTISHEAR_WORKERS=0) or on Ray actors (workers.pool)."""
    # a layer database too big for memory goes under the cache, one folder per search engine
    spec = EngineSpec(request, folder=str(runner.library.cache / "layer-databases"))
    if runner.settings.workers < 1:
        evaluator = InProcessEvaluator(spec.build(settings=runner.library))
        try:
            yield evaluator
        finally:
            evaluator.close()  # a layer database on disk removes its files
        return
    from workers.pool import ray_evaluator  # Ray is imported only where actors are wanted

    with ray_evaluator(
        spec, workers=runner.settings.workers, address=runner.settings.ray_address
    ) as ev:
        yield ev


def run_search_job(runner: JobContext, search_id: uuid.UUID) -> None:
    def read(session: Session) -> tuple[SearchCreate, bytes | None]:
        search = session.scalars(
            select(Search).options(undefer(Search.state)).where(Search.id == search_id)
        ).one()
        return SearchCreate.model_validate(search.request), search.state

    request, state = runner.write(read, f"reading search {search_id}")
    ensure_assets(runner, request, evaluation=request.compare_baselines)
    persist = _Persister(runner, search_id)
    activity = _ActivityWriter(runner, search_id)
    start = time.perf_counter()
    with evaluator_for(runner, request) as evaluator:
        eval_ids = None  # after the model loaded: a broken model is reported as such
        if request.compare_baselines:  # the windows every held-out figure of this search uses
            tokenizer = load_tokenizer(request.model, settings=runner.library)
            eval_ids = held_out_ids(tokenizer, request.evaluation, runner.library)
        result = run_search(
            evaluator,
            request,
            resume_from=state,
            on_generation=persist,
            held_out_ids=eval_ids,
            activity=activity,
        )
    summary = result.summary()
    family = model_family(request.model, runner.library)

    def finish(session: Session) -> None:
        # Rows are built for each try: a failed try's session may keep hold of its objects.
        # The front, and the recommendation where the as-shipped re-score picked one off it.
        rows = candidate_rows(search_id, None, result.listed(), summary.recommended_key)
        rec_row = next(r for r in rows if r.recommended)
        outcome = SearchOutcome(
            **summary.model_dump(),
            recommended_id=rec_row.id,
            persist_seconds=persist.seconds,
            attempt_seconds=time.perf_counter() - start,
        )
        if not queue.finish(
            session,
            Search,
            search_id,
            runner.id,
            JobStatus.SUCCEEDED,
            result=outcome.model_dump(mode="json"),
            eta_s=0.0,
            activity=None,
        ):
            if retry.succeeded(session, Search, search_id):
                return  # an earlier try committed, its reply lost (or a taker-over finished)
            raise LeaseLostError  # rolls the final front and the genomes back too
        # Its best genomes, for later searches on the same family, pattern and target.
        genomes = genome_rows(
            search_id=search_id,
            request=request,
            summary=summary,
            listed=[s.record() for s in result.listed()],
            family=family,
        )
        session.add_all([*rows, *genomes])

    runner.write(finish, f"storing the result of search {search_id}")
    logger.info("search %s succeeded: recommended %s", search_id, summary.recommended_key)


class _Persister:
    """Writes each generation in one transaction, only while this runner holds the job."""

    def __init__(self, runner: JobContext, search_id: uuid.UUID) -> None:
        self.runner = runner
        self.search_id = search_id
        self.seconds = 0.0  # this attempt's time in the per-generation transactions

    def __call__(self, snap: GenerationSnapshot) -> None:
        if self.runner.lost.is_set():
            raise LeaseLostError
        start = time.perf_counter()
        cancel = self.runner.write(
            lambda session: self._write(session, snap),
            f"storing generation {snap.number} of search {self.search_id}",
        )
        self.seconds += time.perf_counter() - start
        if cancel:
            raise CancelledError
        if self.runner.stop.is_set():
            raise StoppedError

    def _write(self, session: Session, snap: GenerationSnapshot) -> bool | None:
        """The generation, unless an earlier try stored it; returns whether cancel is asked."""
        p = snap.progress
        ours = (
            Search.id == self.search_id,
            Search.lease_owner == self.runner.id,
            Search.status == JobStatus.RUNNING,
        )
        owned = session.execute(
            update(Search)
            .where(*ours, Search.generations_done < snap.number)
            .values(
                state=snap.state,
                generations_done=snap.number,
                evaluations=p.evaluations,
                best_error=p.best_error,
                elapsed_s=p.elapsed,
                eta_s=p.eta,
            )
            .execution_options(synchronize_session=False)
        )
        if owned.rowcount != 1:
            # Still ours with this generation stored: a try whose commit reply was lost.
            done = session.scalar(select(Search.generations_done).where(*ours))
            if done is None or done < snap.number:
                raise LeaseLostError
        else:
            session.add(
                Generation(
                    search_id=self.search_id,
                    number=snap.number,
                    stage=p.stage,
                    stage_generation=p.generation,
                    evaluations=snap.record["evaluations"],
                    total_evaluations=p.evaluations,
                    best_error=p.best_error,
                    seconds=snap.record["seconds"],
                    elapsed_s=p.elapsed,
                    population=population_json(snap.population, snap.front),
                )
            )
            session.add_all(candidate_rows(self.search_id, snap.number, snap.front, None))
            session.flush()
        return session.scalar(select(Search.cancel_requested).where(Search.id == self.search_id))


class _ActivityWriter:
    """Writes what the search does between generations (service.schemas.Activity) at most
    every `seconds`, and at the start and end of each step, in one try (skipped through an
    outage); a cancel asked for meanwhile stops the search there, not at a long rung's end."""

    def __init__(self, runner: JobContext, search_id: uuid.UUID, seconds: float = 2.0) -> None:
        self.runner = runner
        self.search_id = search_id
        self.seconds = seconds
        self._last = -math.inf

    def __call__(self, a: Activity) -> None:
        now = time.monotonic()
        if now - self._last < self.seconds and 0 < a.done < a.total:
            return
        self._last = now
        if self.runner.lost.is_set():
            raise LeaseLostError
        row = ActivityRead(
            what=a.what,
            done=a.done,
            total=a.total,
            best_error=a.best_error,
            elapsed_s=a.elapsed,
            eta_s=a.eta,
            at=utcnow(),
        ).model_dump(mode="json")

        def write(session: Session) -> bool:
            session.execute(
                update(Search)
                .where(
                    Search.id == self.search_id,
                    Search.lease_owner == self.runner.id,
                    Search.status == JobStatus.RUNNING,
                )
                .values(activity=row)
                .execution_options(synchronize_session=False)
            )
            cancel = session.scalar(
                select(Search.cancel_requested).where(Search.id == self.search_id)
            )
            return bool(cancel)

        # Best effort, one try: progress notes never hold a search up through an outage (the
        # generations' writes wait it out); the next step's note goes through again.
        try:
            with self.runner.sessions.begin() as session:
                cancel = write(session)
        except DBAPIError as exc:
            if not retry.is_connection_error(exc):
                raise
            logger.debug("activity of search %s not stored: %s", self.search_id, exc)
            return
        if cancel:
            raise CancelledError
        if self.runner.stop.is_set():
            raise StoppedError
