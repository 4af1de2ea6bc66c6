"""A checkpoint export job: prune the candidate as it ships, measure it, store one tar."""

from __future__ import annotations

import logging
import tarfile
import tempfile
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

from optishear.data import evaluation_stream, sample_calibration
from optishear.evaluate import perplexity
from optishear.export import export_checkpoint, measured_sparsity
from optishear.files import sha256_file
from optishear.hf import load_model, torch_dtype
from optishear.prune import prune_candidate
from service import queue, repository
from service.runner.errors import LeaseLostError
from service.runner.search_job import ensure_assets
from service.schemas import SearchCreate
from service.tables import CandidateRow, Checkpoint, JobStatus, Search

if TYPE_CHECKING:
    from service.runner.loop import QueueRunner

logger = logging.getLogger(__name__)


def run_export(runner: QueueRunner, checkpoint_id: uuid.UUID) -> None:
    with runner.sessions() as session:
        ckpt = session.get_one(Checkpoint, checkpoint_id)
        row = session.get_one(CandidateRow, ckpt.candidate_id)
        search = session.get_one(Search, ckpt.search_id)
        request = SearchCreate.model_validate(search.request)
        candidate = repository.candidate_read(row).candidate()
        stored = {"id": str(row.id), "key": row.key, "genome": row.genome}
    library = runner.library
    ensure_assets(runner, request, evaluation=True)
    model, tokenizer, source = load_model(
        request.model, settings=library, dtype=torch_dtype(request.dtype)
    )
    calib = sample_calibration(tokenizer, request.calibration, library)
    report = prune_candidate(
        model,
        calib,
        candidate,
        request.pattern,
        refit=request.refit_top > 0,  # shipped as the search scored it
        batch_size=request.batch_size,
    )
    stream = evaluation_stream(tokenizer, request.evaluation, library)
    ppl = perplexity(model, stream, request.evaluation)
    if runner.lost.is_set():
        raise LeaseLostError
    final = runner.settings.resolved_checkpoint_dir() / f"{checkpoint_id}.tar"
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
                "candidate": stored,
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
    with runner.sessions.begin() as session:
        if not queue.finish(
            session,
            Checkpoint,
            checkpoint_id,
            runner.id,
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
