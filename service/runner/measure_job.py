"""A measurement job: unpack an exported checkpoint and measure it, downstream tasks
(optishear.evaluation.tasks) or speed against the dense model (optishear.evaluation.speed); store the report.

The checkpoint is read from its tar in the store into a staging folder (service.runner.staging),
so that a runner killed midway leaves nothing a sweep would not remove. A task or setting the
library refuses (an unknown task, a prompt longer than the model's positions) fails the job
with the library's message, which the API shows.
"""

from __future__ import annotations

import logging
import tarfile
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy.orm import Session

from optishear.core.errors import DataError
from optishear.model.hf import load_model, torch_device, torch_dtype
from service import queue
from service.runner import retry
from service.runner.context import JobContext
from service.runner.errors import LeaseLostError
from service.runner.search_job import ensure_assets
from service.runner.staging import staging_folder
from service.schemas import SearchCreate
from service.store import MISSING, CheckpointStore
from service.tables import Checkpoint, JobStatus, Measurement, Search

if TYPE_CHECKING:
    from torch import nn
    from transformers import PreTrainedTokenizerBase


logger = logging.getLogger(__name__)


def run_measurement(runner: JobContext, measurement_id: uuid.UUID) -> None:
    def read(session: Session) -> tuple[str, dict[str, Any], uuid.UUID, SearchCreate]:
        row = session.get_one(Measurement, measurement_id)
        ckpt = session.get_one(Checkpoint, row.checkpoint_id)
        search = session.get_one(Search, ckpt.search_id)
        return row.kind, dict(row.request), ckpt.id, SearchCreate.model_validate(search.request)

    kind, body, checkpoint_id, request = runner.write(read, f"reading measurement {measurement_id}")
    archive = CheckpointStore.of(runner.settings).archive(checkpoint_id)
    if archive is None:
        raise DataError(f"checkpoint {checkpoint_id}: {MISSING}")
    with staging_folder(runner) as (_, tmp):
        folder = _unpacked(archive, tmp)
        model, tokenizer, _ = load_model(
            str(folder),
            settings=runner.library,
            dtype=torch_dtype(request.dtype, runner.settings.measure_device),
        )
        if kind == "tasks":
            result = _tasks(runner, model, tokenizer, body)
        else:
            result = _speed(runner, model, request, body)
    if runner.lost.is_set():
        raise LeaseLostError

    def finish(session: Session) -> None:
        if not queue.finish(
            session, Measurement, measurement_id, runner.id, JobStatus.SUCCEEDED, result=result
        ) and not retry.succeeded(session, Measurement, measurement_id):
            raise LeaseLostError

    runner.write(finish, f"storing measurement {measurement_id}")
    logger.info("measurement %s (%s) of checkpoint %s done", measurement_id, kind, checkpoint_id)


def _unpacked(archive: Path, into: Path) -> Path:
    """The HF folder inside the checkpoint's tar, extracted under `into`."""
    try:
        with tarfile.open(archive, "r:") as tar:
            tar.extractall(into / "checkpoint", filter="data")  # no links out, no devices
    except (tarfile.TarError, OSError) as exc:
        raise DataError(f"the checkpoint's archive cannot be read: {exc}") from exc
    configs = sorted((into / "checkpoint").glob("*/config.json"))
    if len(configs) != 1:
        raise DataError("the checkpoint's archive holds no single HF folder")
    return configs[0].parent


def _tasks(
    runner: JobContext, model: nn.Module, tokenizer: PreTrainedTokenizerBase, body: dict[str, Any]
) -> dict[str, Any]:
    from optishear.evaluation.tasks import (  # lm-eval loads only where it is used
        TaskConfig,
        run_tasks,
    )

    config = TaskConfig(
        tasks=tuple(body["tasks"]),
        num_fewshot=body["num_fewshot"],
        limit=body["limit"],
        batch_size=body["batch_size"],
        include_path=runner.settings.task_path,
    )
    model.to(torch_device(runner.settings.measure_device))
    return run_tasks(model, tokenizer, config).to_dict()


def _speed(
    runner: JobContext, pruned: nn.Module, request: SearchCreate, body: dict[str, Any]
) -> dict[str, Any]:
    from optishear.evaluation.speed import SpeedConfig, measure_speed

    config = SpeedConfig(
        batch_sizes=tuple(body["batch_sizes"]),
        prompt_len=body["prompt_len"],
        decode_tokens=body["decode_tokens"],
        repeats=body["repeats"],
        kernel=body["kernel"],
    )
    ensure_assets(runner, request, evaluation=False)  # the dense model, once on this machine
    device = torch_device(runner.settings.measure_device)
    dense, _, _ = load_model(
        request.model, settings=runner.library, dtype=torch_dtype(request.dtype, device)
    )
    return measure_speed(dense, pruned, config, device=device).to_dict()
