"""Checkpoint exports: status and download (HEAD, ETag and If-None-Match, Range)."""

from __future__ import annotations

import logging
import uuid
from typing import Annotated

from fastapi import APIRouter, Depends, Header, HTTPException, Response, status
from fastapi.responses import FileResponse
from sqlalchemy import select
from starlette.responses import MalformedRangeHeader, RangeNotSatisfiable

from service import repository
from service.deps import PrincipalDep, SessionDep, StoreDep, get_or_404, visible_or_404
from service.responses import RETRY_AFTER
from service.schemas import CheckpointRead, Message
from service.store import MISSING, UNAVAILABLE
from service.tables import Checkpoint, JobStatus, Search

logger = logging.getLogger(__name__)
router = APIRouter(prefix="/checkpoints", tags=["checkpoints"])
NOT_FOUND = {404: {"model": Message, "description": "no checkpoint with this id"}}
TAR = {"application/x-tar": {"schema": {"type": "string", "format": "binary"}}}


def checkpoint_or_404(
    checkpoint_id: uuid.UUID, session: SessionDep, principal: PrincipalDep
) -> Checkpoint:
    ckpt = get_or_404(session, Checkpoint, checkpoint_id, "checkpoint")
    owner = session.scalar(select(Search.owner).where(Search.id == ckpt.search_id))
    visible_or_404(principal, owner or "", "checkpoint", checkpoint_id)
    return ckpt


CheckpointDep = Annotated[Checkpoint, Depends(checkpoint_or_404)]


@router.get("/{checkpoint_id}", responses=NOT_FOUND)
def read_checkpoint(ckpt: CheckpointDep, session: SessionDep, store: StoreDep) -> CheckpointRead:
    """Status, size, sha256, held-out perplexity and measured sparsity."""
    return repository.checkpoint(session=session, ckpt=ckpt, store=store)


class ArchiveResponse(FileResponse):
    """Starlette's FileResponse, with RFC 9110's answers to bad ranges: a range whose last
    byte comes before its first is unsatisfiable (416, not 400), and a Range it cannot parse
    (another unit, no numbers) is ignored: the whole archive, 200."""

    @classmethod
    def _parse_range_header(cls, http_range: str, file_size: int) -> list[tuple[int, int]]:
        try:
            return super()._parse_range_header(http_range, file_size)
        except MalformedRangeHeader as exc:
            if "start must be less than end" in str(exc.content):
                raise RangeNotSatisfiable(file_size) from None
            return []


def _matches(if_none_match: str, etag: str) -> bool:
    tags = [t.strip().removeprefix("W/") for t in if_none_match.split(",")]
    return "*" in tags or etag in tags


DOWNLOAD = {
    **NOT_FOUND,
    200: {"content": TAR, "description": "the HF folder as a tar"},
    206: {"content": TAR, "description": "the requested byte range"},
    304: {"description": "If-None-Match named this archive's ETag"},
    409: {"model": Message, "description": "the export is not finished"},
    410: {"model": Message, "description": "the archive has left the store"},
    416: {"description": "the range lies outside the archive"},
}


@router.head(
    "/{checkpoint_id}/download",
    response_class=ArchiveResponse,
    responses=DOWNLOAD,
    operation_id="head_checkpoint_download",
    summary="Download checkpoint headers",
)
@router.get(
    "/{checkpoint_id}/download",
    response_class=ArchiveResponse,
    responses=DOWNLOAD,
    operation_id="download_checkpoint",
)
def download_checkpoint(
    ckpt: CheckpointDep,
    store: StoreDep,
    if_none_match: Annotated[
        str | None,
        Header(max_length=1024, description="an ETag from an earlier download: 304 if same"),
    ] = None,
) -> Response:
    """One tar of the HF folder. `ETag` is the archive's sha256 (equal weights, equal bytes);
    `Range` gives 206, or 416 when unsatisfiable; HEAD gives the headers alone."""
    if ckpt.status != JobStatus.SUCCEEDED or not ckpt.file_name:
        raise HTTPException(
            status.HTTP_409_CONFLICT, f"checkpoint {ckpt.id} is {ckpt.status}, not ready"
        )
    if (problem := store.problem()) is not None:
        logger.error("checkpoint store: %s", problem)
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, UNAVAILABLE, headers=RETRY_AFTER)
    path = store.archive(ckpt.id)
    if path is None:
        raise HTTPException(status.HTTP_410_GONE, f"checkpoint {ckpt.id}: {MISSING}")
    etag = f'"{ckpt.sha256}"'
    if if_none_match is not None and _matches(if_none_match, etag):
        return Response(status_code=status.HTTP_304_NOT_MODIFIED, headers={"ETag": etag})
    return ArchiveResponse(
        path,
        media_type="application/x-tar",
        filename=f"optishear-{ckpt.id}.tar",
        headers={"ETag": etag, "X-Checkpoint-SHA256": ckpt.sha256 or ""},
    )
