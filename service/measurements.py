"""Measurements of an exported checkpoint, as the API takes and shows them: downstream task
accuracy (lm-evaluation-harness) and prefill/decode speed against the dense model.

A measurement is a job on the queue like an export (service.queue); the runner
(service.runner.measure_job) unpacks the checkpoint and runs the library's optishear.evaluation.tasks
or optishear.evaluation.speed on it. The API imports neither: it never holds torch.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select
from sqlalchemy.orm import Session

from service.db import utcnow
from service.schemas import JobState
from service.tables import Checkpoint, JobStatus, Measurement

# lm-eval task and group names: letters, digits, '_', '-', '.'; never a path.
TaskName = Annotated[str, Field(pattern=r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,99}$")]


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, frozen=True)


class TasksMeasurementCreate(_In):
    """Zero- or few-shot accuracy on lm-eval tasks: by name from the hub, or the server's
    local tasks (OPTISHEAR_TASK_PATH)."""

    kind: Literal["tasks"]
    tasks: list[TaskName] = Field(
        min_length=1,
        max_length=32,
        description="lm-eval task names, e.g. boolq, rte, hellaswag, winogrande, arc_easy, "
        "arc_challenge, openbookqa (the zero-shot set pruning papers report)",
        examples=[["arc_easy", "hellaswag"]],
    )
    num_fewshot: int = Field(0, ge=0, le=25, description="in-context examples per question")
    limit: int | None = Field(
        None, ge=1, le=1_000_000, description="at most this many examples per task (all: none)"
    )
    batch_size: int = Field(8, ge=1, le=256, description="sequences per forward pass")


class SpeedMeasurementCreate(_In):
    """Prefill and decode latency and throughput, dense against this checkpoint, on the
    runner's device."""

    kind: Literal["speed"]
    batch_sizes: list[Annotated[int, Field(ge=1, le=256)]] = Field(
        [1, 8], min_length=1, max_length=8, description="batch sizes to time"
    )
    prompt_len: int = Field(128, ge=1, le=8192, description="prompt tokens (prefill)")
    decode_tokens: int = Field(32, ge=1, le=2048, description="tokens generated (decode)")
    repeats: int = Field(3, ge=1, le=20, description="timed runs; the median is reported")
    kernel: Literal["auto", "dense", "semi_structured"] = Field(
        "auto",
        description="auto: PyTorch's 2:4 semi-structured kernels where they apply (2:4, CUDA, "
        "half precision), else dense kernels, said so in the result",
    )


MeasurementCreate = Annotated[
    TasksMeasurementCreate | SpeedMeasurementCreate, Field(discriminator="kind")
]


class MeasurementRead(BaseModel):
    id: uuid.UUID
    checkpoint_id: uuid.UUID
    kind: Literal["tasks", "speed"]
    status: JobState
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    attempts: int
    error: str | None
    request: dict[str, Any]
    result: dict[str, Any] | None = Field(
        description="when succeeded: optishear.evaluation.tasks.TaskReport (scores per task and metric) "
        "or optishear.evaluation.speed.SpeedReport (rows per model and batch size, ratios, kernel note), "
        "as JSON"
    )


def read(row: Measurement) -> MeasurementRead:
    return MeasurementRead.model_validate(row, from_attributes=True)


def create(
    session: Session, ckpt: Checkpoint, body: TasksMeasurementCreate | SpeedMeasurementCreate
) -> Measurement:
    row = Measurement(
        id=uuid.uuid4(),
        checkpoint_id=ckpt.id,
        kind=body.kind,
        request=body.model_dump(mode="json"),
        status=JobStatus.QUEUED,
        attempts=0,
        created_at=utcnow(),
    )
    session.add(row)
    session.commit()
    return row


def of_checkpoint(session: Session, checkpoint_id: uuid.UUID) -> list[Measurement]:
    return list(
        session.scalars(
            select(Measurement)
            .where(Measurement.checkpoint_id == checkpoint_id)
            .order_by(Measurement.created_at)
        )
    )
