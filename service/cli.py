"""`optishear serve`, `optishear worker`, `optishear run` and `optishear db upgrade|downgrade`.

Registered through the `optishear.commands` entry point, so the library never imports the
service. Heavy imports happen inside the handlers: building the parser stays cheap.
"""

from __future__ import annotations

import argparse
import logging
import signal
import subprocess
import sys
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


def register(sub: Any) -> None:
    serve = sub.add_parser("serve", help="run the REST API (and, for SQLite, a runner beside it)")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument(
        "--runner",
        choices=("auto", "yes", "no"),
        default="auto",
        help="start a runner process beside the API (auto: with the embedded SQLite database)",
    )
    serve.set_defaults(plugin_handler=_serve)

    worker = sub.add_parser("worker", help="claim and run queued searches and exports")
    worker.add_argument("--once", action="store_true", help="exit when the queue is empty")
    worker.set_defaults(plugin_handler=_worker)

    run = sub.add_parser(
        "run",
        help="queue a search, run it in this process and export its recommended checkpoint",
        description="Submit a search to the queue in the configured database (as POST "
        "/api/searches does), work the queue in this process until it finishes, export the "
        "recommended candidate and print the front, the baselines and the checkpoint. The "
        "search stays in the database: `optishear serve` shows it afterwards.",
    )
    _add_search_args(run)
    run.add_argument(
        "--workers",
        type=int,
        default=None,
        help="Ray actors evaluating candidates for this run (OPTISHEAR_WORKERS; 0: in this "
        "process; default: the setting's value)",
    )
    run.set_defaults(plugin_handler=_run)

    dbp = sub.add_parser("db", help="database schema (Alembic)")
    dbp.add_argument("action", choices=("upgrade", "downgrade"))
    dbp.add_argument("revision", nargs="?", default=None, help="default head / base")
    dbp.set_defaults(plugin_handler=_db)


# `optishear run` flags -> SearchCreate fields (a dotted path for the nested ones). Flags left
# out are left out of the request, so SearchCreate's defaults apply, as they do for the API.
_SEARCH_FLAGS: tuple[tuple[str, str, Any, str], ...] = (
    ("--sparsity", "sparsity", float, "target (mean) share of pruned weights"),
    ("--pattern", "pattern", str, "unstructured, 2:4, 4:8, ..."),
    ("--stages", "stages", str, "metric, layerwise, both (metric, then plan) or joint"),
    ("--population", "population", int, "candidates per generation"),
    ("--generations", "generations", int, "generations per stage"),
    ("--seed", "seed", int, "search seed"),
    ("--step", "step", float, "per-block sparsity step"),
    ("--levels", "levels", int, "per-block offsets -levels..levels steps"),
    ("--low-fidelity", "low_fidelity_samples", int, "screen candidates on N samples first"),
    ("--promote", "promote_fraction", float, "share of screened candidates promoted"),
    ("--objective", "objective", str, "kl (token KL to the dense model) or logits_fro"),
    ("--fitness-samples", "fitness_samples", int, "calibration samples scoring the error"),
    ("--engine-stats", "engine_stats", str, "baseline (Wanda's pruned model) or dense"),
    ("--refit-top", "refit_top", int, "refit the K best candidates; ship the best refit"),
    ("--rescore-top", "rescore_top", int, "re-score the K best as shipped; ship the best"),
    ("--batch-size", "batch_size", int, "sequences per forward pass"),
    ("--calib", "calibration.source", str, "calibration text: 'wiki' (bundled) or a file"),
    ("--nsamples", "calibration.n_samples", int, "calibration samples"),
    ("--seqlen", "calibration.seq_len", int, "calibration sample length in tokens"),
    ("--calib-seed", "calibration.seed", int, "seed of the calibration offsets"),
    ("--eval-text", "evaluation.text", str, "held-out text: 'wiki' (bundled) or a file"),
    ("--eval-seqlen", "evaluation.seq_len", int, "held-out window length in tokens"),
    ("--eval-windows", "evaluation.windows", int, "held-out windows"),
    ("--eval-batch-size", "evaluation.batch_size", int, "held-out windows per forward pass"),
)


# What a field's None default stands for, in the help text.
_NONE_MEANS = {"sparsity": "0.5, or N/M", "low_fidelity_samples": "off", "fitness_samples": "all"}


def _add_search_args(p: argparse.ArgumentParser) -> None:
    from service.schemas import CalibrationIn, EvaluationIn, SearchCreate

    models = {"": SearchCreate, "calibration": CalibrationIn, "evaluation": EvaluationIn}
    p.add_argument("--model", required=True, help="a registered name or an HF folder")
    for flag, path, kind, text in _SEARCH_FLAGS:
        group, _, field = path.rpartition(".")
        default = models[group].model_fields[field].get_default(call_default_factory=True)
        default = _NONE_MEANS.get(path, default) if default is None else default
        p.add_argument(
            flag,
            dest=f"field:{path}",
            metavar=field.upper(),
            type=kind,
            help=f"{text} (default {default})",
        )


def _search_request(args: argparse.Namespace) -> SearchCreate:
    """SearchCreate from the flags given; bad input raises ConfigError with the API's message."""
    from pydantic import ValidationError

    from optishear.errors import ConfigError
    from optishear.settings import LibrarySettings
    from service.schemas import SearchCreate, validation_message

    body: dict[str, Any] = {"model": args.model}
    for _flag, path, _kind, _text in _SEARCH_FLAGS:
        value = getattr(args, f"field:{path}")
        if value is not None:
            group, _, field = path.rpartition(".")
            (body.setdefault(group, {}) if group else body)[field] = value
    try:
        spec = SearchCreate.model_validate(body)
    except ValidationError as exc:
        raise ConfigError(validation_message(exc.errors())) from None
    spec.validate_sources(LibrarySettings())  # ConfigError, as the API's 422
    return spec


def _run(args: argparse.Namespace) -> int:
    """Queue the search, work the queue here until it and its export end; 0 when both succeed."""
    from sqlalchemy import make_url

    from optishear.errors import ConfigError
    from service import db
    from service.settings import get_settings
    from workers.runner import QueueRunner

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
        db.upgrade(url)
        engine = db.make_engine(url)
        sessions = db.make_sessions(engine)
        search_id, ahead = _submit(db.make_sessions(engine, write=True), spec)
        where = "this process" if settings.workers < 1 else f"{settings.workers} Ray workers"
        _say(f"search {search_id} queued in {make_url(url).render_as_string(hide_password=True)}")
        if ahead:
            _say(f"{ahead} older queued search(es) come first; this process works them too")
        _say(
            f"{spec.model}: {spec.target():.0%} {spec.pattern}, stages {spec.stages}, "
            f"population {spec.population}, {spec.total_generations()} generations; "
            f"evaluating in {where}"
        )
        runner = QueueRunner(settings, sessions)
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


def _say(line: str = "") -> None:
    print(line, flush=True)  # noqa: T201 - the command's output is its interface


def _submit(sessions: sessionmaker[Session], spec: SearchCreate) -> tuple[uuid.UUID, int]:
    """Queue the search; returns its id and how many queued searches are older."""
    from sqlalchemy import func, select

    from service import repository
    from service.models import JobStatus, Search

    with sessions() as session:
        search, _ = repository.create_search(session=session, spec=spec, idempotency_key=None)
        ahead = session.scalar(
            select(func.count())
            .select_from(Search)
            .where(Search.status == JobStatus.QUEUED, Search.created_at < search.created_at)
        )
        return search.id, int(ahead or 0)


def _wait(
    sessions: sessionmaker[Session],
    model: Any,
    job_id: uuid.UUID,
    worker: threading.Thread,
    on_poll: Any = None,
) -> Any:
    """Poll the job's row until it is finished; on_poll(session, row) runs on every poll."""
    from service.models import FINISHED

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

    from service import db, repository
    from service.models import Candidate, Checkpoint, JobStatus, Search

    start = time.monotonic()
    printed = 0

    def progress(session: Session, search: Search) -> None:
        nonlocal printed
        per_stage = int(search.request["generations"])
        for g in repository.generations(session=session, search_id=search_id)[printed:]:
            _say(
                f"generation {g.number}/{search.total_generations} ({g.stage} "
                f"{g.stage_generation}/{per_stage}): best error {g.best_error:.5f}, "
                f"{g.evaluations} evaluations ({g.total_evaluations} in all), "
                f"{g.seconds:.0f} s, {time.monotonic() - start:.0f} s elapsed"
            )
            printed += 1

    search = _wait(sessions, Search, search_id, worker, progress)
    if search.status != JobStatus.SUCCEEDED:
        _say(f"search {search_id} {search.status}: {search.error or 'no reason given'}")
        return 1
    result = search.result or {}
    _say(
        f"search {search_id} succeeded: {result.get('evaluations')} evaluations, "
        f"{result.get('cache_hits')} cache hits, {time.monotonic() - start:.0f} s"
    )
    with sessions() as session:
        front = repository.front(session=session, search=search, generation=None)
        recommended = session.scalars(
            select(Candidate).where(
                Candidate.search_id == search_id,
                Candidate.generation.is_(None),
                Candidate.recommended.is_(True),
            )
        ).one()
    assert front is not None  # a succeeded search always has its final front
    _print_front(front, search.request)

    with db.for_writing(sessions)() as session:
        search = session.get_one(Search, search_id)
        ckpt, _ = repository.create_checkpoint(
            session=session, search=search, candidate=recommended
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
    _say(f"  perplexity  {ckpt.perplexity:.3f} held-out ({ckpt.eval_tokens} tokens)")
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
            f"   error {b.error:.5f}  sparsity {b.sparsity:.4f}  {b.name}  "
            f"blocks {_blocks(b.block_sparsity)}"
        )
    rec = next(c for c in front.candidates if c.recommended)
    _say(f"recommended (*): candidate {rec.id}, genome {rec.genome.index}: {rec.genome.formula}")


def _db(args: argparse.Namespace) -> int:
    from service import db
    from service.settings import get_settings

    url = get_settings().resolved_database_url()
    if args.action == "upgrade":
        db.upgrade(url, args.revision or "head")
    else:
        db.downgrade(url, args.revision or "base")
    return 0


def _worker(args: argparse.Namespace) -> int:
    from service import db
    from service.settings import get_settings
    from workers.runner import QueueRunner

    settings = get_settings()
    url = settings.resolved_database_url()
    db.upgrade(url)  # idempotent; a worker may start before the API
    runner = QueueRunner(settings, db.make_sessions(db.make_engine(url)))

    def stop(_sig: int, _frame: Any) -> None:
        logger.info("stopping after the current generation or export")
        runner.stop.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    runner.run(until_idle=args.once)
    return 0


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from service import db
    from service.app import create_app
    from service.settings import get_settings

    settings = get_settings()
    db.upgrade(settings.resolved_database_url())  # before a runner process starts too
    with_runner = {"yes": True, "no": False}.get(args.runner, settings.runs_embedded_runner())
    child = None
    if with_runner:  # a process, not a thread: a search's CPU work never stalls the API
        child = subprocess.Popen([sys.executable, "-m", "service.cli", "worker"])
        logger.info("runner process %d started", child.pid)
    received: list[int] = []

    def note(sig: int, _frame: Any) -> None:
        received.append(sig)

    # Uvicorn re-raises the signal that stopped it once it has shut down; with our handler
    # in place that does not kill this process before the runner child is stopped.
    signal.signal(signal.SIGTERM, note)
    signal.signal(signal.SIGINT, note)
    try:
        uvicorn.run(create_app(settings, migrate=False), host=args.host, port=args.port)
    finally:
        if child is not None:
            child.terminate()  # the runner hands its search back after the current generation
            try:
                child.wait(timeout=120)
            except subprocess.TimeoutExpired:
                child.kill()  # its lease expires and another runner resumes the search
    return 0


def main(argv: list[str] | None = None) -> int:
    """`python -m service.cli worker` (what `optishear serve` starts beside the API)."""
    parser = argparse.ArgumentParser(prog="optishear")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    return int(args.plugin_handler(args))


if __name__ == "__main__":
    sys.exit(main())
