"""Checkpoint exports: status and download (Content-Length, ETag, Range)."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, status
from fastapi.responses import FileResponse

from service import repository
from service.deps import SessionDep, SettingsDep, get_or_404
from service.schemas import CheckpointRead, Message
from service.tables import Checkpoint, JobStatus

router = APIRouter(prefix="/checkpoints", tags=["checkpoints"])
NOT_FOUND = {404: {"model": Message, "description": "no checkpoint with this id"}}


def checkpoint_or_404(checkpoint_id: uuid.UUID, session: SessionDep) -> Checkpoint:
    return get_or_404(session, Checkpoint, checkpoint_id, "checkpoint")


CheckpointDep = Annotated[Checkpoint, Depends(checkpoint_or_404)]


@router.get("/{checkpoint_id}", responses=NOT_FOUND)
def read_checkpoint(ckpt: CheckpointDep, session: SessionDep) -> CheckpointRead:
    """Status, size, sha256, held-out perplexity and measured sparsity."""
    return repository.checkpoint(session=session, ckpt=ckpt)


@router.get(
    "/{checkpoint_id}/download",
    response_class=FileResponse,
    responses={
        **NOT_FOUND,
        200: {"content": {"application/x-tar": {}}, "description": "the HF folder as a tar"},
        206: {"content": {"application/x-tar": {}}, "description": "the requested byte range"},
        409: {"model": Message, "description": "the export is not finished"},
        416: {"description": "the range lies outside the archive"},
    },
)
def download_checkpoint(ckpt: CheckpointDep, settings: SettingsDep) -> FileResponse:
    """One tar of the HF folder; `ETag` is the archive's sha256; `Range` gives 206 or 416."""
    if ckpt.status != JobStatus.SUCCEEDED or not ckpt.file_name:
        raise HTTPException(
            status.HTTP_409_CONFLICT, f"checkpoint {ckpt.id} is {ckpt.status}, not ready"
        )
    store = settings.resolved_checkpoint_dir()
    # The name is built from the id, never taken from a request; resolve() also defeats links.
    path = (store / f"{ckpt.id}.tar").resolve()
    if not path.is_relative_to(store) or not path.is_file():
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"checkpoint {ckpt.id} file is missing")
    return FileResponse(
        path,
        media_type="application/x-tar",
        filename=f"optishear-{ckpt.id}.tar",
        headers={"ETag": f'"{ckpt.sha256}"', "X-Checkpoint-SHA256": ckpt.sha256 or ""},
    )
