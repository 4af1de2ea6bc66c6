"""The job runner: claims jobs from the queue and runs them (searches and checkpoint exports).

Data flows service -> DB queue -> this runner -> Ray workers (or in process) -> `optishear`: the
runner reads and writes the service's tables (service.db, models, queue), the service never
imports the runner except to start it (`optishear worker`, `optishear serve`).

Every completed generation is written in one transaction (generation summary, that
generation's front and the library's serialized search state), guarded by the lease, so a
runner that lost its job can never write into it and a runner that resumes it continues after
the last persisted generation. `optishear worker` runs `Runner.run` until stopped.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import tarfile
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker, undefer

from optishear.assets import assets_ready, pull_assets
from optishear.data import BUNDLED, load_texts, sample_calibration, tokenize_stream
from optishear.errors import ConfigError, OptiShearError
from optishear.evaluate import perplexity
from optishear.export import export_checkpoint, measured_sparsity
from optishear.files import sha256_file
from optishear.masks import Pattern
from optishear.meta import Genome
from optishear.models import REGISTERED_MODELS, load_model
from optishear.plans import PlanSpec
from optishear.prune import PruneConfig, prune_model
from optishear.search.engine_spec import EngineSpec
from optishear.search.loop import (
    BatchEvaluator,
    GenerationSnapshot,
    InProcessEvaluator,
    Scored,
    run_search,
)
from optishear.settings import LibrarySettings
from service import db, queue
from service.db import utcnow
from service.models import Candidate, Checkpoint, Generation, JobStatus, Runner, Search
from service.schemas import SearchCreate
from service.settings import ServiceSettings

logger = logging.getLogger(__name__)

EVALUATOR_PLUGINS = "optishear.evaluators"  # the workers package registers "ray" here


class LeaseLostError(Exception):
    """Another runner holds our job now: stop without writing anything more."""


class CancelledError(Exception):
    """The search was cancelled through the API."""


class StoppedError(Exception):
    """This runner is shutting down: hand the job back after the generation just saved."""


def candidate_rows(
    search_id: uuid.UUID, generation: int | None, front: Sequence[Scored], recommended: str | None
) -> list[Candidate]:
    rows = []
    for rank, s in enumerate(front):
        key = s.to_dict()["id"]
        rows.append(
            Candidate(
                id=uuid.uuid4(),
                search_id=search_id,
                generation=generation,
                key=key,
                rank=rank,
                genome=s.candidate.genome.to_dict(),
                ratios=[float(r) for r in s.candidate.ratios],
                error=float(s.evaluation.error),
                sparsity=float(s.evaluation.sparsity),
                gap=float(s.gap),
                meets_target=s.meets_target,
                n_samples=s.evaluation.n_samples,
                recommended=key == recommended,
            )
        )
    return rows


def population_json(snap: GenerationSnapshot) -> list[dict[str, Any]]:
    """The generation's population as stored with it; `on_front` marks its front members."""
    on_front = {s.to_dict()["id"] for s in snap.front}
    rows = []
    for s in snap.population:
        key = s.to_dict()["id"]
        rows.append(
            {
                "key": key,
                "genome": s.candidate.genome.to_dict(),
                "ratios": [float(r) for r in s.candidate.ratios],
                "error": float(s.evaluation.error),
                "sparsity": float(s.evaluation.sparsity),
                "gap": float(s.gap),
                "meets_target": s.meets_target,
                "n_samples": s.evaluation.n_samples,
                "on_front": key in on_front,
            }
        )
    return rows


class QueueRunner:
    """Works the queue: checkpoint exports first (short, someone waits), then searches."""

    def __init__(
        self,
        settings: ServiceSettings,
        sessions: sessionmaker[Session],
        *,
        library: LibrarySettings | None = None,
        runner_id: str | None = None,
    ) -> None:
        self.settings = settings
        self.sessions = db.for_writing(sessions)  # a runner's transactions mostly write
        self.library = library or LibrarySettings()
        self.id = runner_id or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.stop = threading.Event()
        self._job: tuple[type[Search | Checkpoint], uuid.UUID] | None = None
        self._lost = threading.Event()
        self._persist_seconds = 0.0

    # -- liveness ---------------------------------------------------------------------------
    def register(self) -> None:
        with self.sessions.begin() as session:
            session.merge(
                Runner(
                    id=self.id,
                    hostname=socket.gethostname(),
                    pid=os.getpid(),
                    started_at=utcnow(),
                    heartbeat_at=utcnow(),
                )
            )

    def heartbeat(self) -> None:
        job = self._job
        with self.sessions.begin() as session:
            session.execute(
                update(Runner)
                .where(Runner.id == self.id)
                .values(heartbeat_at=utcnow(), job=str(job[1]) if job else None)
            )
            if job and not queue.extend_lease(
                session, job[0], job[1], self.id, self.settings.lease_seconds
            ):
                logger.warning("lost the lease on %s %s", job[0].__tablename__, job[1])
                self._lost.set()

    def _heartbeat_loop(self) -> None:
        while not self.stop.wait(self.settings.heartbeat_seconds):
            try:
                self.heartbeat()
            except SQLAlchemyError as exc:  # the DB may be back at the next beat
                logger.warning("heartbeat failed: %s", exc)

    def run(self, *, until_idle: bool = False) -> None:
        """Claim and run jobs until `stop` is set (or, with until_idle, the queue is empty)."""
        self.register()
        beat = threading.Thread(target=self._heartbeat_loop, name="heartbeat", daemon=True)
        beat.start()
        logger.info("runner %s working the queue", self.id)
        try:
            while not self.stop.is_set():
                try:
                    worked = self.run_once()
                except SQLAlchemyError as exc:  # a DB outage must not kill the runner
                    logger.warning("queue unavailable: %s", exc)
                    worked = False
                if not worked:
                    if until_idle:
                        break
                    self.stop.wait(self.settings.poll_seconds)
        finally:
            self.stop.set()
            beat.join(timeout=5)
            with contextlib.suppress(SQLAlchemyError), self.sessions.begin() as session:
                session.execute(
                    update(Runner)
                    .where(Runner.id == self.id)
                    .values(heartbeat_at=utcnow(), job=None)
                )

    def run_once(self) -> bool:
        """Claim one job and run it; False when the queue had nothing to claim."""
        for model, work in ((Checkpoint, self._export), (Search, self._search)):
            job_id = queue.claim(
                self.sessions,
                model,
                self.id,
                lease_seconds=self.settings.lease_seconds,
                max_attempts=self.settings.max_attempts,
            )
            if job_id is not None:
                self._run_job(model, job_id, work)
                return True
        return False

    def _run_job(self, model: Any, job_id: uuid.UUID, work: Any) -> None:
        self._job = (model, job_id)
        self._lost.clear()
        logger.info("runner %s claimed %s %s", self.id, model.__tablename__, job_id)
        try:
            work(job_id)
        except LeaseLostError:
            logger.warning("%s %s was taken over by another runner", model.__tablename__, job_id)
        except CancelledError:
            self._end(model, job_id, JobStatus.CANCELLED)
        except StoppedError:  # not a failure: the attempt is not counted
            logger.info("%s %s handed back to the queue", model.__tablename__, job_id)
            self._end(model, job_id, JobStatus.QUEUED, attempts=model.attempts - 1)
        except OptiShearError as exc:  # bad model, text or settings: another try cannot help
            logger.warning("%s %s failed: %s", model.__tablename__, job_id, exc)
            self._end(model, job_id, JobStatus.FAILED, error=str(exc))
        except Exception as exc:
            logger.exception("%s %s crashed", model.__tablename__, job_id)
            self._retry_or_fail(model, job_id, f"{type(exc).__name__}: {exc}")
        finally:
            self._job = None

    def _end(self, model: Any, job_id: uuid.UUID, status: JobStatus, **kw: Any) -> None:
        with self.sessions.begin() as session:
            queue.finish(session, model, job_id, self.id, status, **kw)

    def _retry_or_fail(self, model: Any, job_id: uuid.UUID, error: str) -> None:
        with self.sessions.begin() as session:
            attempts = session.scalar(select(model.attempts).where(model.id == job_id)) or 0
            if attempts >= self.settings.max_attempts:
                error = f"failed after {attempts} attempts: {error}"
                queue.finish(session, model, job_id, self.id, JobStatus.FAILED, error=error)
            else:  # back to the queue; the next claim resumes from the persisted state
                queue.finish(session, model, job_id, self.id, JobStatus.QUEUED, error=error)

    # -- searches ---------------------------------------------------------------------------
    def _ensure_assets(self, request: SearchCreate, *, evaluation: bool) -> None:
        bundled = (
            request.model in REGISTERED_MODELS
            or request.calibration.source == BUNDLED
            or (evaluation and request.evaluation.text == BUNDLED)  # only exports evaluate
        )
        if bundled and not assets_ready(self.library):
            logger.info("bundled assets not cached on this runner: fetching them once")
            pull_assets(self.library)

    @contextlib.contextmanager
    def _evaluator(self, request: SearchCreate) -> Iterator[BatchEvaluator]:
        spec = EngineSpec(
            request.model,
            request.calibration.config(),
            request.pattern,
            request.batch_size,
            request.fitness_samples,
            request.objective,
            stats_target=request.target() if request.engine_stats == "baseline" else None,
        )
        if self.settings.workers < 1:
            yield InProcessEvaluator(spec.build(settings=self.library))
            return
        found = entry_points(group=EVALUATOR_PLUGINS, name="ray")
        if not found:
            raise ConfigError(
                "OPTISHEAR_WORKERS >= 1 needs the 'ray' evaluator plugin: "
                "pip install 'optishear[workers]'"
            )
        plugin = found["ray"].load()
        with plugin(spec, workers=self.settings.workers, address=self.settings.ray_address) as ev:
            yield ev

    def _search(self, search_id: uuid.UUID) -> None:
        with self.sessions() as session:
            search = session.scalars(
                select(Search).options(undefer(Search.state)).where(Search.id == search_id)
            ).one()
            request = SearchCreate.model_validate(search.request)
            state = search.state
        settings = request.search_settings()
        self._ensure_assets(request, evaluation=False)
        self._persist_seconds = 0.0
        start = time.perf_counter()
        with self._evaluator(request) as evaluator:
            result = run_search(
                evaluator,
                settings,
                resume_from=state,
                on_generation=lambda snap: self._persist_generation(search_id, snap),
            )
        recommended = result.recommended.to_dict()["id"]
        # The front, and the recommendation where the as-shipped re-score picked one off it.
        rows = candidate_rows(search_id, None, result.listed(), recommended)
        rec_row = next(r for r in rows if r.recommended)
        summary = {
            "recommended_id": str(rec_row.id),
            "recommended_key": recommended,
            "evaluations": result.evaluations,
            "cache_hits": result.cache_hits,
            "search_seconds": result.seconds,
            # This attempt only: time in the per-generation DB transactions, and the wall time.
            "persist_seconds": self._persist_seconds,
            "attempt_seconds": time.perf_counter() - start,
            "stages": [{"stage": o.stage, "front_size": len(o.front)} for o in result.stages],
            # With refit_top / rescore_top: the finalists again, as shipped (refit / mask only).
            **{
                name: [
                    {
                        "key": s.to_dict()["id"],
                        "error": float(s.evaluation.error),
                        "sparsity": float(s.evaluation.sparsity),
                    }
                    for s in shipped
                ]
                for name, shipped in (("refitted", result.refitted), ("rescored", result.rescored))
            },
            # Published methods at the same target (Wanda; OWL+Wanda when unstructured).
            "baselines": [
                {
                    "name": b.name,
                    "key": b.to_dict()["id"],
                    "genome": b.candidate.genome.to_dict(),
                    "ratios": [float(r) for r in b.candidate.ratios],
                    "error": float(b.evaluation.error),
                    "sparsity": float(b.evaluation.sparsity),
                    "gap": float(b.gap),
                }
                for b in result.baselines
            ],
        }
        with self.sessions.begin() as session:
            session.add_all(rows)
            if not queue.finish(
                session, Search, search_id, self.id, JobStatus.SUCCEEDED, result=summary, eta_s=0.0
            ):
                raise LeaseLostError  # rolls the final front back too
        logger.info("search %s succeeded: recommended %s", search_id, recommended)

    def _persist_generation(self, search_id: uuid.UUID, snap: GenerationSnapshot) -> None:
        """One transaction per generation: summary, front and state, only while we hold it."""
        if self._lost.is_set():
            raise LeaseLostError
        start = time.perf_counter()
        p = snap.progress
        with self.sessions.begin() as session:
            owned = session.execute(
                update(Search)
                .where(
                    Search.id == search_id,
                    Search.lease_owner == self.id,
                    Search.status == JobStatus.RUNNING,
                )
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
                raise LeaseLostError
            session.add(
                Generation(
                    search_id=search_id,
                    number=snap.number,
                    stage=p.stage,
                    stage_generation=p.generation,
                    evaluations=snap.record["evaluations"],
                    total_evaluations=p.evaluations,
                    best_error=p.best_error,
                    seconds=snap.record["seconds"],
                    elapsed_s=p.elapsed,
                    population=population_json(snap),
                )
            )
            session.add_all(candidate_rows(search_id, snap.number, snap.front, None))
            session.flush()
            cancel = session.scalar(select(Search.cancel_requested).where(Search.id == search_id))
        self._persist_seconds += time.perf_counter() - start
        if cancel:
            raise CancelledError
        if self.stop.is_set():
            raise StoppedError

    # -- checkpoint exports -----------------------------------------------------------------
    def checkpoint_path(self, checkpoint_id: uuid.UUID) -> Path:
        return self.settings.resolved_checkpoint_dir() / f"{checkpoint_id}.tar"

    def _export(self, checkpoint_id: uuid.UUID) -> None:
        with self.sessions() as session:
            ckpt = session.get_one(Checkpoint, checkpoint_id)
            cand = session.get_one(Candidate, ckpt.candidate_id)
            search = session.get_one(Search, ckpt.search_id)
            request = SearchCreate.model_validate(search.request)
            genome = Genome.from_index(int(cand.genome["index"]))
            ratios = tuple(cand.ratios)
        self._ensure_assets(request, evaluation=True)
        model, tokenizer, source = load_model(request.model, settings=self.library)
        calib = sample_calibration(tokenizer, request.calibration.config(), self.library)
        plan = PlanSpec("explicit", ratios=ratios) if len(set(ratios)) > 1 else PlanSpec()
        config = PruneConfig(
            "meta",
            request.target(),
            Pattern.parse(request.pattern),
            plan,
            genome,
            "pruned",
            request.batch_size,
            reconstruct=request.refit_top > 0,  # shipped as the search scored it
        )
        report = prune_model(model, calib, config)
        stream = tokenize_stream(
            tokenizer, load_texts(request.evaluation.text, "evaluation", self.library)
        )
        ppl = perplexity(model, stream, request.evaluation.config())
        if self._lost.is_set():
            raise LeaseLostError
        final = self.checkpoint_path(checkpoint_id)
        with tempfile.TemporaryDirectory(dir=final.parent, prefix=".export-") as tmp:
            folder = Path(tmp) / f"optishear-{checkpoint_id}"
            export_checkpoint(
                model,
                tokenizer,
                folder,
                {
                    "source_model": request.model,
                    "source_kind": source.kind,
                    "search_id": str(ckpt.search_id),
                    "candidate": {"id": str(cand.id), "key": cand.key, "genome": cand.genome},
                    "prune": report.to_dict(),
                    "eval": ppl.to_dict(),
                },
            )
            part = Path(tmp) / "archive.tar"
            with tarfile.open(part, "w") as tar:  # safetensors barely compress: plain tar
                tar.add(folder, arcname=folder.name)
            digest = sha256_file(part)
            size = part.stat().st_size
            part.replace(final)  # same filesystem: an atomic rename into the store
        with self.sessions.begin() as session:
            if not queue.finish(
                session,
                Checkpoint,
                checkpoint_id,
                self.id,
                JobStatus.SUCCEEDED,
                file_name=final.name,
                size_bytes=size,
                sha256=digest,
                perplexity=ppl.perplexity,
                eval_tokens=ppl.n_tokens,
                sparsity=measured_sparsity(model)["overall"],
            ):
                raise LeaseLostError
        logger.info("checkpoint %s exported (%d bytes)", checkpoint_id, size)
