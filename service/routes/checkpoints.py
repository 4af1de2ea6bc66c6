"""Checkpoint exports: status, download (tar or compact; HEAD, ETag and If-None-Match, Range)
and delete."""

from __future__ import annotations

import logging
import uuid
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Header, HTTPException, Query, Response, status
from fastapi.responses import FileResponse
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker
from starlette.responses import MalformedRangeHeader, RangeNotSatisfiable

from optishear.core.errors import OptiShearError
from service import compacts, repository
from service.deps import (
    HousekeepingDep,
    PrincipalDep,
    SessionDep,
    SessionsDep,
    StoreDep,
    deleted,
    get_or_404,
    visible_or_404,
)
from service.responses import RETRY_AFTER
from service.schemas import CheckpointRead, Message
from service.store import MISSING, UNAVAILABLE, CheckpointStore
from service.tables import Checkpoint, JobStatus, Search

logger = logging.getLogger(__name__)
router = APIRouter(prefix="/checkpoints", tags=["checkpoints"])
NOT_FOUND = {404: {"model": Message, "description": "no checkpoint with this id"}}
TAR = {"application/x-tar": {"schema": {"type": "string", "format": "binary"}}}
COMPACT_TYPE = "application/octet-stream"
ARCHIVES = {**TAR, COMPACT_TYPE: {"schema": {"type": "string", "format": "binary"}}}


def checkpoint_or_404(
    checkpoint_id: uuid.UUID, session: SessionDep, principal: PrincipalDep
) -> Checkpoint:
    ckpt = get_or_404(session, Checkpoint, checkpoint_id, "checkpoint")
    owner, deleting = session.execute(
        select(Search.owner, Search.deleting_at).where(Search.id == ckpt.search_id)
    ).one()
    visible_or_404(principal, owner or "", "checkpoint", checkpoint_id)
    if ckpt.deleting_at is not None or deleting is not None:  # a delete has started
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"checkpoint {checkpoint_id} not found")
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
    200: {"content": ARCHIVES, "description": "the HF folder as a tar (or a compact archive)"},
    206: {"content": ARCHIVES, "description": "the requested byte range"},
    304: {"description": "If-None-Match named this archive's ETag"},
    409: {"model": Message, "description": "the export is not finished"},
    410: {"model": Message, "description": "the archive has left the store"},
    416: {"description": "the range lies outside the archive"},
    500: {"model": Message, "description": "the compact archive could not be built"},
}
ArchiveFormat = Annotated[
    Literal["tar", "compact"],
    Query(
        alias="format",
        description="tar: the HF folder as it is; compact: zeros as a bitmask, restored bit "
        "for bit by `optishear unpack` (built on the first request, then kept in the store)",
    ),
]


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
    sessions: SessionsDep,
    archive_format: ArchiveFormat = "tar",
    if_none_match: Annotated[
        str | None,
        Header(max_length=1024, description="an ETag from an earlier download: 304 if same"),
    ] = None,
) -> Response:
    """One tar of the HF folder, or (`format=compact`) one compact archive of it. `ETag` is
    the archive's sha256 (equal weights, equal bytes); `Range` gives 206, or 416 when
    unsatisfiable; HEAD gives the headers alone."""
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
    if archive_format == "compact":
        return _compact_download(ckpt, store, sessions, if_none_match)
    etag = f'"{ckpt.sha256}"'
    if if_none_match is not None and _matches(if_none_match, etag):
        return Response(status_code=status.HTTP_304_NOT_MODIFIED, headers={"ETag": etag})
    return ArchiveResponse(
        path,
        media_type="application/x-tar",
        filename=f"optishear-{ckpt.id}.tar",
        headers={"ETag": etag, "X-Checkpoint-SHA256": ckpt.sha256 or ""},
    )


def _compact_download(
    ckpt: Checkpoint,
    store: CheckpointStore,
    sessions: sessionmaker[Session],
    if_none_match: str | None,
) -> Response:
    # A recorded archive answers a matching If-None-Match without being looked at again.
    built = compacts.recorded(sessions, store, ckpt.id)
    if (
        built is not None
        and if_none_match is not None
        and _matches(if_none_match, f'"{built.sha256}"')
    ):
        return Response(
            status_code=status.HTTP_304_NOT_MODIFIED, headers={"ETag": f'"{built.sha256}"'}
        )
    try:
        built = built or compacts.ensure_compact(sessions, store, ckpt.id)
    except compacts.CompactGoneError as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"checkpoint {ckpt.id} not found") from exc
    except OptiShearError as exc:  # the stored tar cannot be read: the operator's to look at
        logger.error("checkpoint %s: compact archive not built: %s", ckpt.id, exc)
        raise HTTPException(
            status.HTTP_500_INTERNAL_SERVER_ERROR,
            "the compact archive could not be built; the server log has the details",
        ) from exc
    except OSError as exc:  # a full or failing disk
        logger.error("checkpoint %s: compact archive not built: %s", ckpt.id, exc)
        raise HTTPException(
            status.HTTP_503_SERVICE_UNAVAILABLE, UNAVAILABLE, headers=RETRY_AFTER
        ) from exc
    etag = f'"{built.sha256}"'
    if if_none_match is not None and _matches(if_none_match, etag):
        return Response(status_code=status.HTTP_304_NOT_MODIFIED, headers={"ETag": etag})
    return ArchiveResponse(
        built.path,
        media_type=COMPACT_TYPE,
        filename=f"optishear-{ckpt.id}{compacts.SUFFIX}",
        headers={"ETag": etag, "X-Compact-SHA256": built.sha256},
    )


@router.delete(
    "/{checkpoint_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    responses={
        **NOT_FOUND,
        204: {"description": "deleted, with its archives"},
        409: {"model": Message, "description": "the export is queued or running"},
    },
)
def delete_checkpoint(
    checkpoint_id: uuid.UUID, principal: PrincipalDep, housekeeping: HousekeepingDep
) -> Response:
    """Delete a finished export and its archives (tar and compact; the disk is reclaimed).
    Its search and candidate stay: the candidate can be exported again."""
    return deleted(housekeeping.delete_checkpoint, checkpoint_id, principal)
