"""Export staging folders in the checkpoint store: owned by a runner, swept when it is gone.

An export stages its tar (and the unpacked HF folder) in `<store>/.export-*`; a runner killed
mid-export leaves that behind. The folder's `owner` file names its runner, so a runner starting
up removes the folders of runners with no fresh heartbeat, and never a live runner's.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import tempfile
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError

from optishear.core.errors import OptiShearError
from service.db import utcnow
from service.runner.context import JobContext
from service.tables import RunnerRow

logger = logging.getLogger(__name__)

PREFIX = ".export-"
OWNER = "owner"
ORPHAN_AGE = 3600.0  # a folder without an owner file: killed between mkdir and the write


class StoreNotWritableError(OptiShearError):
    """The checkpoint store cannot take a file: another try would only prune again."""


@contextlib.contextmanager
def staging_folder(runner: JobContext) -> Iterator[tuple[Path, Path]]:
    """(store, a fresh staging folder in it, owned by `runner`), removed afterwards.

    Made before the model is loaded: an unwritable store fails the export at once. The message
    names no server path (API callers see it); the log does.
    """
    store = tmp = None
    try:
        store = runner.settings.resolved_checkpoint_dir()
        tmp = Path(tempfile.mkdtemp(dir=store, prefix=PREFIX))
        (tmp / OWNER).write_text(runner.id)  # first: a folder is never without its owner long
    except OSError as exc:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        where = store or runner.settings.checkpoint_dir
        logger.error("checkpoint store %s is not writable: %s", where, exc)
        raise StoreNotWritableError(
            "the checkpoint store is not writable; the operator must fix the server's "
            "checkpoint_dir"
        ) from None
    try:
        yield store, tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def sweep(runner: JobContext) -> None:
    """Remove the staging folders of runners without a fresh heartbeat (see readyz), and
    ownerless ones older than ORPHAN_AGE seconds. Best effort: a failure is logged, not raised."""
    try:
        store = runner.settings.resolved_checkpoint_dir()
        folders = sorted(p for p in store.glob(f"{PREFIX}*") if p.is_dir())
        if not folders:
            return
        live = _live_runners(runner)
    except (OSError, SQLAlchemyError) as exc:
        logger.warning("staging sweep skipped: %s", exc)
        return
    swept = reclaimed = 0
    for folder in folders:
        try:
            owner = _owner(folder)
            if owner in live or (not owner and time.time() - folder.stat().st_mtime < ORPHAN_AGE):
                continue
            size = _size(folder)
            shutil.rmtree(folder)
        except OSError as exc:  # e.g. removed meanwhile by its owner
            logger.warning("staging sweep: %s: %s", folder, exc)
            continue
        swept += 1
        reclaimed += size
        logger.info("swept %s (runner %s, %d bytes)", folder, owner or "unknown", size)
    if swept:
        logger.info("swept %d export staging folders, %d bytes reclaimed", swept, reclaimed)


def _owner(folder: Path) -> str:
    try:
        return (folder / OWNER).read_text().strip()
    except FileNotFoundError:
        return ""


def _live_runners(runner: JobContext) -> set[str]:
    """Runners with a fresh heartbeat, other than this one (it has only just started)."""
    fresh = utcnow() - timedelta(seconds=max(3 * runner.settings.heartbeat_seconds, 5.0))
    with runner.sessions() as session:
        ids = session.scalars(
            select(RunnerRow.id).where(RunnerRow.heartbeat_at > fresh, RunnerRow.id != runner.id)
        )
        return set(ids)


def _size(folder: Path) -> int:
    return sum(p.lstat().st_size for p in folder.rglob("*") if p.is_file() and not p.is_symlink())
