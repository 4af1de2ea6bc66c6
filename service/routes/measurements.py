"""Measurements of an exported checkpoint: queue one (tasks or speed), list them, read one."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Body, Depends, HTTPException, status

from service import measurements
from service.deps import PrincipalDep, SessionDep, WriteSessionDep, get_or_404
from service.measurements import MeasurementCreate, MeasurementRead
from service.routes.checkpoints import NOT_FOUND, CheckpointDep, checkpoint_or_404
from service.schemas import Message
from service.tables import Checkpoint, JobStatus, Measurement

router = APIRouter(tags=["measurements"])


def checkpoint_for_write(
    checkpoint_id: uuid.UUID, session: WriteSessionDep, principal: PrincipalDep
) -> Checkpoint:
    # Locked (Postgres): a delete of this checkpoint and this request take turns, so no
    # measurement is queued on a checkpoint being deleted.
    session.get(Checkpoint, checkpoint_id, with_for_update=True)
    return checkpoint_or_404(checkpoint_id, session, principal)


@router.post(
    "/checkpoints/{checkpoint_id}/measurements",
    status_code=status.HTTP_202_ACCEPTED,
    responses={
        **NOT_FOUND,
        409: {"model": Message, "description": "the export has not succeeded"},
    },
)
def create_measurement(
    ckpt: Annotated[Checkpoint, Depends(checkpoint_for_write)],
    session: WriteSessionDep,
    body: Annotated[MeasurementCreate, Body()],
) -> MeasurementRead:
    """Queue a measurement of this checkpoint: downstream task accuracy through
    lm-evaluation-harness, or prefill/decode speed against the dense model. A runner does
    it after the exports queued before it; poll `GET /api/measurements/{id}`."""
    if ckpt.status != JobStatus.SUCCEEDED:
        raise HTTPException(
            status.HTTP_409_CONFLICT,
            f"checkpoint {ckpt.id} is {ckpt.status}: only a succeeded export can be measured",
        )
    return measurements.read(measurements.create(session, ckpt, body))


@router.get("/checkpoints/{checkpoint_id}/measurements", responses=NOT_FOUND)
def read_measurements(ckpt: CheckpointDep, session: SessionDep) -> list[MeasurementRead]:
    """This checkpoint's measurements, oldest first, with their results once succeeded."""
    return [measurements.read(m) for m in measurements.of_checkpoint(session, ckpt.id)]


@router.get(
    "/measurements/{measurement_id}",
    responses={404: {"model": Message, "description": "no measurement with this id"}},
)
def read_measurement(
    measurement_id: uuid.UUID, session: SessionDep, principal: PrincipalDep
) -> MeasurementRead:
    row = get_or_404(session, Measurement, measurement_id, "measurement")
    try:
        checkpoint_or_404(row.checkpoint_id, session, principal)
    except HTTPException:  # another key's, or being deleted: not revealed
        raise HTTPException(
            status.HTTP_404_NOT_FOUND, f"measurement {measurement_id} not found"
        ) from None
    return measurements.read(row)
