"""A checkpoint export job: prune the candidate as it ships, measure it, store one tar.

The tar is reproducible: the same candidate gives the same bytes (and sha256) on every export.
Its folder is named after the candidate, not the checkpoint row, and its manifest holds no
timings; those vary between exports of the same weights.
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from typing import TYPE_CHECKING, Any

from sqlalchemy import update
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from optishear.artifacts.export import export_checkpoint, measured_sparsity, write_archive
from optishear.data.text import evaluation_stream, sample_calibration
from optishear.evaluation.held_out import HeldOutComparison, manifest_comparison
from optishear.evaluation.perplexity import perplexity
from optishear.model.hf import load_model, torch_dtype
from optishear.recipe.prune import prune_model
from optishear.recipe.shipped import prune_candidate
from service import queue, repository
from service.housekeeping import Housekeeping
from service.runner import retry
from service.runner.context import JobContext
from service.runner.errors import LeaseLostError
from service.runner.search_job import ensure_assets
from service.runner.staging import staging_folder
from service.schemas import SearchCreate
from service.store import CheckpointStore
from service.tables import CandidateRow, Checkpoint, JobStatus, Search

if TYPE_CHECKING:
    from optishear.config import PruneConfig
    from optishear.recipe.candidates import Candidate

logger = logging.getLogger(__name__)


_UPDATE_NOTE = {"none": "", "obs": " + OBS update", "lstsq": " + refit"}


def run_export(runner: JobContext, checkpoint_id: uuid.UUID) -> None:
    def read(
        session: Session,
    ) -> tuple[
        SearchCreate,
        Candidate,
        PruneConfig | None,
        dict[str, Any],
        uuid.UUID,
        HeldOutComparison | None,
    ]:
        ckpt = session.get_one(Checkpoint, checkpoint_id)
        row = session.get_one(CandidateRow, ckpt.candidate_id)
        search = session.get_one(Search, ckpt.search_id)
        stored = {"id": str(row.id), "key": row.key, "genome": row.genome}
        outcome = repository.outcome(search.result)
        # The search's held-out comparison was measured on its recommended model: this one.
        compared = outcome.held_out if outcome is not None and row.recommended else None
        request = SearchCreate.model_validate(search.request)
        # Shipped as the search scored it: the recommended model by the search's own recipe
        # (a baseline's, when one beat the search), any other by its genome, plan and update.
        recipe = outcome.shipped if outcome is not None and row.recommended else None
        return (
            request,
            repository.candidate_read(row).candidate(),
            recipe,
            stored,
            ckpt.search_id,
            compared,
        )

    request, candidate, recipe, stored, search_id, compared = runner.write(
        read, f"reading export {checkpoint_id}"
    )
    # The store is checked (a staging folder made in it) before the model is loaded.
    with staging_folder(runner) as (store, tmp):
        library = runner.library
        ensure_assets(runner, request, evaluation=True)
        model, tokenizer, source = load_model(
            request.model, settings=library, dtype=torch_dtype(request.dtype)
        )
        calib = sample_calibration(tokenizer, request.calibration, library)
        how = recipe.survivor_update if recipe is not None else request.shipped_update()
        progress = ExportProgressWriter(runner, checkpoint_id, _UPDATE_NOTE[how])
        if recipe is not None:
            report = prune_model(model, calib, recipe, progress=progress)
        else:
            report = prune_candidate(
                model,
                calib,
                candidate,
                request.pattern,
                update=how,
                method=request.shipped_method(),
                batch_size=request.batch_size,
                progress=progress,
                refit_holdout=request.refit_holdout if how == "lstsq" else 0,
            )
        # A recommended candidate's comparison measured this very model (pruned by its recipe,
        # the same windows): its figure, not a second forward over the held-out text.
        ppl = (
            compared.searched_eval(recipe.model_dump(mode="json"))
            if compared is not None and recipe is not None
            else None
        )
        if ppl is None:
            stream = evaluation_stream(tokenizer, request.evaluation, library)
            ppl = perplexity(model, stream, request.evaluation).to_dict()
        if runner.lost.is_set():
            raise LeaseLostError
        folder = tmp / f"optishear-{_safe(stored['key'])}"
        export_checkpoint(
            model,
            tokenizer,
            folder,
            {
                "source_model": request.model,
                "source_kind": source.kind,
                "search_id": str(search_id),
                "candidate": stored,
                "prune": _untimed(report.to_dict()),
                "eval": _untimed(ppl),
                "held_out_comparison": manifest_comparison(compared),
            },
        )
        final = store / f"{checkpoint_id}.tar"
        part = tmp / "archive.tar"
        digest, size = write_archive(folder, part)
        part.replace(final)  # same filesystem: an atomic rename into the store
    sparsity = measured_sparsity(model)["overall"]

    def finish(session: Session) -> None:
        if not queue.finish(
            session,
            Checkpoint,
            checkpoint_id,
            runner.id,
            JobStatus.SUCCEEDED,
            file_name=final.name,
            size_bytes=size,
            sha256=digest,
            perplexity=ppl["perplexity"],
            eval_tokens=ppl["n_tokens"],
            sparsity=sparsity,
        ) and not retry.succeeded(session, Checkpoint, checkpoint_id):
            raise LeaseLostError

    runner.write(finish, f"storing export {checkpoint_id}")
    logger.info("checkpoint %s exported (%d bytes)", checkpoint_id, size)
    # Retention (OPTISHEAR_KEEP_CHECKPOINTS, OPTISHEAR_STORE_MAX_BYTES) never takes this one.
    housekeeping = Housekeeping(
        runner.sessions, CheckpointStore.of(runner.settings), runner.settings
    )
    housekeeping.after_export(checkpoint_id)


class ExportProgressWriter:
    """The library's progress callback, stored on the export's row for the API and dashboard:
    steps done, the stage (the library's words, plus `suffix`), and an ETA from the stage's
    pace so far. Written at most every
    `every` seconds (and at the last step), guarded by the lease, best effort: a progress
    write that fails is skipped, never retried, and never fails the export."""

    def __init__(
        self, runner: JobContext, checkpoint_id: uuid.UUID, suffix: str = "", every: float = 2.0
    ) -> None:
        self.runner = runner
        self.checkpoint_id = checkpoint_id
        self.suffix = suffix
        self.every = every
        self.stage = ""
        self.first = 0
        self.start = time.monotonic()
        self.last = -float("inf")

    def __call__(self, done: int, total: int, what: str = "") -> None:
        now = time.monotonic()
        stage = f"{what or 'pruning'}{self.suffix}"
        if stage != self.stage:  # a new stage: its pace is timed from its first report
            self.stage, self.start, self.first, self.last = stage, now, done, -float("inf")
        if now - self.last < self.every and done < total:
            return
        self.last = now
        paced = done - self.first
        eta = (now - self.start) / paced * (total - done) if paced > 0 else None
        try:
            with self.runner.sessions.begin() as session:
                session.execute(
                    update(Checkpoint)
                    .where(
                        Checkpoint.id == self.checkpoint_id,
                        Checkpoint.lease_owner == self.runner.id,
                    )
                    .values(
                        progress_done=done,
                        progress_total=total,
                        progress_stage=self.stage,
                        eta_s=eta,
                    )
                    .execution_options(synchronize_session=False)
                )
        except SQLAlchemyError as exc:
            logger.warning("export %s: progress not stored (%s)", self.checkpoint_id, exc)


def _untimed(record: dict[str, Any]) -> dict[str, Any]:
    """A report without its durations: they differ between exports of the same weights."""
    return {k: v for k, v in record.items() if k != "seconds"}


def _safe(name: str) -> str:
    """A folder name from a candidate key ('<genome index>-<plan label>')."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", name)
