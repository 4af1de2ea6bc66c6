"""`optishear run`: queue a search, work it in this process, export its recommendation."""

from __future__ import annotations

import argparse
import logging
import threading
import time
import uuid
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sqlalchemy.orm import Session, sessionmaker

    from service.schemas import FrontRead, SearchCreate
    from service.settings import ServiceSettings

logger = logging.getLogger(__name__)

POLL_SECONDS = 0.5  # `optishear run` reads its job's progress from the database this often


def _search_request(args: argparse.Namespace) -> SearchCreate:
    """SearchCreate from the flags given; bad input raises ConfigError with the API's message."""
    from optishear.cli.flags import config_from_flags, flag_value
    from optishear.core.errors import ConfigError
    from optishear.core.settings import LibrarySettings
    from service.schemas import SearchCreate

    source, use = getattr(args, "metric_from", None), getattr(args, "metric_use", None)
    if use is not None and source is None:
        raise ConfigError("--metric-use needs --metric-from SEARCH_ID")
    # Resolved against the database in _submit, as POST /api/searches does.
    extra: dict[str, Any] = (
        {"metric_from": {"search": source, "use": use or "seed"}} if source else {}
    )
    # `run` shows the gain by default: --no-baselines skips the held-out comparison.
    extra["compare_baselines"] = flag_value(args, "compare_baselines") is not False
    spec = config_from_flags(SearchCreate, args, **extra)
    spec.validate_sources(LibrarySettings())  # ConfigError, as the API's 422
    return spec


def run_command(args: argparse.Namespace) -> int:
    """Queue the search, work the queue here until it and its export end; 0 when both succeed."""
    from sqlalchemy import make_url

    from optishear.core.errors import ConfigError
    from service import db
    from service.runner import QueueRunner
    from service.settings import get_settings

    spec = _search_request(args)
    settings = get_settings()
    if args.workers is not None:  # OPTISHEAR_WORKERS for this run only
        if args.workers < 0:
            raise ConfigError(f"--workers must be >= 0, got {args.workers}")
        settings = settings.model_copy(update={"workers": args.workers})
    root = logging.getLogger()
    level = root.level
    if not getattr(args, "verbose", False):  # our lines say what happens; the runner's log on -v
        root.setLevel(logging.WARNING)
    url = settings.resolved_database_url()
    engine = None
    try:
        with db.unreachable_as_error(url):  # one line, not Alembic's traceback
            db.upgrade(url)
        engine = db.make_engine(url)
        sessions = db.make_sessions(engine)
        search_id, spec, ahead = _submit(db.make_sessions(engine, write=True), spec)
        where = "this process" if settings.workers < 1 else f"{settings.workers} Ray workers"
        _say(f"search {search_id} queued in {make_url(url).render_as_string(hide_password=True)}")
        if ahead:
            _say(f"{ahead} older queued search(es) come first; this process works them too")
        if spec.metric_from is not None:
            _say(_metric_line(spec))
        _say(
            f"{spec.model}: {spec.target:.0%} {spec.pattern}, stages {spec.stages}, "
            f"population {spec.population}, {spec.total_generations()} generations; "
            f"evaluating in {where}"
        )
        runner = QueueRunner(settings, sessions, searches_until=search_id)
        worker = threading.Thread(target=runner.run, name="runner", daemon=True)
        worker.start()
        try:
            return _follow(sessions, search_id, worker, settings)
        except KeyboardInterrupt:
            _say("stopping: the runner hands its job back after the current generation")
            raise
        finally:
            runner.stop.set()
            worker.join()
    finally:
        root.setLevel(level)
        if engine is not None:
            engine.dispose()


def _metric_line(spec: SearchCreate) -> str:
    assert spec.metric_from is not None
    if spec.metric_from.use == "fixed":
        return f"metric from search {spec.metric_from.search}: {spec.genome.formula()} (fixed)"
    return f"seed genomes from search {spec.metric_from.search}: " + "; ".join(
        g.formula() for g in spec.seed_genomes
    )


def _say(line: str = "") -> None:
    print(line, flush=True)  # noqa: T201 - the command's output is its interface


def _submit(
    sessions: sessionmaker[Session], spec: SearchCreate
) -> tuple[uuid.UUID, SearchCreate, int]:
    """Queue the search (its --metric-from expanded, or MetricSourceError); returns its id, the
    stored request and how many queued searches are older."""
    from sqlalchemy import func, select

    from service import genomes, repository
    from service.tables import JobStatus, Search

    with sessions() as session:
        spec = genomes.apply_metric_from(session=session, spec=spec)
        search, _ = repository.create_search(
            session=session, spec=spec, owner="", idempotency_key=None
        )
        ahead = session.scalar(
            select(func.count())
            .select_from(Search)
            .where(Search.status == JobStatus.QUEUED, Search.created_at < search.created_at)
        )
        return search.id, spec, int(ahead or 0)


def _wait(
    sessions: sessionmaker[Session],
    model: Any,
    job_id: uuid.UUID,
    worker: threading.Thread,
    on_poll: Any = None,
) -> Any:
    """Poll the job's row until it is finished; on_poll(session, row) runs on every poll."""
    from service.tables import FINISHED

    while True:
        with sessions() as session:
            row = session.get_one(model, job_id)
            if on_poll is not None:
                on_poll(session, row)
            if row.status in FINISHED:
                return row
        if not worker.is_alive():  # only if the runner itself broke: its log says why
            raise RuntimeError(f"the runner stopped before {model.__tablename__} {job_id} ended")
        time.sleep(POLL_SECONDS)


def _follow(
    sessions: sessionmaker[Session],
    search_id: uuid.UUID,
    worker: threading.Thread,
    settings: ServiceSettings,
) -> int:
    """Print the search's generations, then export its recommended candidate and print both."""
    from sqlalchemy import select

    from optishear.core.heartbeat import LOG_SECONDS
    from optishear.evaluation.held_out import gain_text
    from service import db, repository
    from service.store import CheckpointStore
    from service.tables import CandidateRow, Checkpoint, JobStatus, Search

    start = last = time.monotonic()
    printed = 0

    def progress(session: Session, search: Search) -> None:
        nonlocal printed, last
        per_stage = int(search.request["generations"])
        for g in repository.generations(session=session, search_id=search_id)[printed:]:
            # the metric screen's rungs come before generation 1, numbered -k..-1
            step = (
                f"{g.stage} screen" if g.stage_generation < 1
                else f"{g.stage} {g.stage_generation}/{per_stage}"
            )  # fmt: skip
            _say(
                f"generation {g.number}/{search.total_generations} ({step}): "
                f"best error {g.best_error:.5f}, "
                f"{g.evaluations} evaluations ({g.total_evaluations} in all), "
                f"{g.seconds:.0f} s, {time.monotonic() - start:.0f} s elapsed"
            )
            printed += 1
            last = time.monotonic()
        a = search.activity  # inside a long step: a line at least every LOG_SECONDS
        if a and a["done"] < a["total"] and time.monotonic() - last >= LOG_SECONDS:
            best = f", best error {a['best_error']:.5g}" if a["best_error"] is not None else ""
            left = f", about {a['eta_s']:.0f} s left" if a["eta_s"] is not None else ""
            _say(f"  {a['what']}: {a['done']}/{a['total']} done{best}{left}")
            last = time.monotonic()

    search = _wait(sessions, Search, search_id, worker, progress)
    if search.status != JobStatus.SUCCEEDED:
        _say(f"search {search_id} {search.status}: {search.error or 'no reason given'}")
        return 1
    result = search.result or {}
    _say(
        f"search {search_id} succeeded: {result.get('evaluations')} evaluations, "
        f"{result.get('cache_hits')} cache hits, {time.monotonic() - start:.0f} s"
    )
    if result.get("fallback"):  # a published baseline beat every searched candidate
        _say(f"warning: {result['fallback']}")
    with sessions() as session:
        front = repository.front(session=session, search=search, generation=None)
        recommended = session.scalars(
            select(CandidateRow).where(
                CandidateRow.search_id == search_id,
                CandidateRow.generation.is_(None),
                CandidateRow.recommended.is_(True),
            )
        ).one()
    assert front is not None  # a succeeded search always has its final front
    _print_front(front, search.request)
    compared = repository.outcome(search.result)
    held_out = compared.held_out if compared is not None else None
    if held_out is not None:
        _say("held-out perplexity, measured in this run (same target, calibration, windows):")
        for line in held_out.lines():
            _say(line)

    with db.for_writing(sessions)() as session:
        search = session.get_one(Search, search_id)
        ckpt, _ = repository.create_checkpoint(
            session=session,
            search=search,
            candidate=recommended,
            store=CheckpointStore.of(settings),
        )
    _say(f"exporting the recommended candidate: checkpoint {ckpt.id}")
    ckpt = _wait(sessions, Checkpoint, ckpt.id, worker)
    if ckpt.status != JobStatus.SUCCEEDED:
        _say(f"checkpoint {ckpt.id} {ckpt.status}: {ckpt.error or 'no reason given'}")
        return 1
    path = settings.resolved_checkpoint_dir() / (ckpt.file_name or "")
    _say(f"checkpoint {ckpt.id}")
    _say(f"  file        {path} ({ckpt.size_bytes / 1e6:.1f} MB)")
    _say(f"  sha256      {ckpt.sha256}")
    _say(f"  sparsity    {ckpt.sparsity:.4f} measured")
    gains = ""
    if held_out is not None:
        gains = "; " + ", ".join(gain_text(g, name) for name, g in held_out.gains.items())
    _say(f"  perplexity  {ckpt.perplexity:.3f} held-out ({ckpt.eval_tokens} tokens){gains}")
    base = "http://127.0.0.1:8000"
    _say(f"with `optishear serve` (same database; --host/--port change {base}):")
    _say(f"  dashboard   {base}/#/search/{search_id}")
    _say(f"  search      {base}/api/searches/{search_id}")
    _say(f"  front       {base}/api/searches/{search_id}/front")
    _say(f"  checkpoint  {base}/api/checkpoints/{ckpt.id} (+ /download)")
    _say(f"done in {time.monotonic() - start:.0f} s")
    return 0


def _blocks(ratios: Sequence[float]) -> str:
    """Per-block sparsity in one short phrase: the range and spread across blocks."""
    if not ratios:
        return "-"
    if max(ratios) - min(ratios) < 1e-9:
        return f"uniform {ratios[0]:.3f} x {len(ratios)} blocks"
    mean = sum(ratios) / len(ratios)
    std = (sum((r - mean) ** 2 for r in ratios) / len(ratios)) ** 0.5
    return f"{min(ratios):.3f}-{max(ratios):.3f} over {len(ratios)} blocks (std {std:.3f})"


def _print_front(front: FrontRead, request: dict[str, Any]) -> None:
    _say(f"front ({len(front.candidates)}; error = {request['objective']} to the dense model):")
    for c in front.candidates:
        mark = "*" if c.recommended else " "
        _say(
            f" {mark} error {c.objectives.error:.5f}  sparsity {c.sparsity:.4f}  "
            f"{c.genome.formula}  blocks {_blocks(c.block_sparsity)}"
        )
    _say("baselines at the same target:")
    for b in front.baselines:
        _say(
            f"   error {b.objectives.error:.5f}  sparsity {b.sparsity:.4f}  {b.name}  "
            f"blocks {_blocks(b.block_sparsity)}"
        )
    rec = next(c for c in front.candidates if c.recommended)
    _say(f"recommended (*): candidate {rec.id}, genome {rec.genome.index}: {rec.genome.formula}")
