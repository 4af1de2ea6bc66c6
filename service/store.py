"""The checkpoint store: the folder of exported archives, checked rather than assumed.

What lives there, by name (every other name is left alone):

- `<checkpoint id>.tar`: an export's archive, renamed in by the runner (service.runner).
- `<checkpoint id>.compact`: its compact archive, built on the first `?format=compact`
  download; `.<checkpoint id>.compact.tmp-*` while it is written (optishear.artifacts.compact).
- `.compact.lock`: held while a compact archive is built, so that builds and the sweep of
  their temporary files take turns, across threads and processes.
- `.export-*/`: runners' staging folders (service.runner.staging sweeps those).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from service.settings import ServiceSettings

UNAVAILABLE = "the checkpoint store is unavailable; the server log has the details"
MISSING = "the archive is missing from the checkpoint store: request the export again"

TAR = ".tar"
COMPACT = ".compact"
LOCK = ".compact.lock"
STAGING_PREFIX = ".export-"  # service.runner.staging.PREFIX (the runner's own module)

FileKind = Literal["tar", "compact", "compact-partial"]
_UUID = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
_NAMES: tuple[tuple[re.Pattern[str], FileKind], ...] = (
    (re.compile(rf"^({_UUID})\.tar$"), "tar"),
    (re.compile(rf"^({_UUID})\.compact$"), "compact"),
    (re.compile(rf"^\.({_UUID})\.compact\.tmp-.+$"), "compact-partial"),
)


@dataclass(frozen=True)
class StoreFile:
    """A file of the store that belongs to a checkpoint, by its name."""

    path: Path
    kind: FileKind
    checkpoint_id: uuid.UUID
    size: int


@dataclass(frozen=True)
class DiskUsage:
    bytes: int  # everything under the store folder, staging folders included
    archives: int  # `<id>.tar` files
    compact_archives: int  # `<id>.compact` files
    staging_bytes: int  # runners' staging folders (exports in progress, or left by a crash)


@dataclass(frozen=True)
class CheckpointStore:
    root: Path

    @classmethod
    def of(cls, settings: ServiceSettings) -> CheckpointStore:
        from optishear.core.settings import LibrarySettings

        root = settings.checkpoint_dir or LibrarySettings().cache / "checkpoints"
        return cls(root.expanduser().absolute())

    def problem(self) -> str | None:
        """Why exports cannot be stored or served here (None: it can); creates the folder."""
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            return f"{self.root} cannot be created ({exc.strerror or type(exc).__name__})"
        if not self.root.is_dir():
            return f"{self.root} is not a directory"
        if not os.access(self.root, os.W_OK | os.X_OK):
            return f"{self.root} is not writable"
        return None

    def _inside(self, name: str) -> Path | None:
        root = self.root.resolve()
        # The name is built from the id, never taken from a request.
        path = (root / name).resolve()
        return path if path.is_relative_to(root) and path.is_file() else None

    def archive(self, checkpoint_id: uuid.UUID) -> Path | None:
        """The archive of this export, if it is in the store (links leading out do not count)."""
        return self._inside(f"{checkpoint_id}{TAR}")

    def compact(self, checkpoint_id: uuid.UUID) -> Path | None:
        """The compact archive of this export, if it has been built."""
        return self._inside(f"{checkpoint_id}{COMPACT}")

    def compact_destination(self, checkpoint_id: uuid.UUID) -> Path:
        """Where the compact archive of this export is built (optishear.artifacts.compact.pack_tar
        writes a temporary file beside it and renames it there)."""
        return self.root.resolve() / f"{checkpoint_id}{COMPACT}"

    def remove(self, checkpoint_id: uuid.UUID) -> tuple[int, int]:
        """Unlink this export's archives (tar, compact); returns (files, bytes) removed.
        A compact archive being written is left to its builder (see housekeeping)."""
        files = size = 0
        for name in (f"{checkpoint_id}{TAR}", f"{checkpoint_id}{COMPACT}"):
            path = self.root / name
            try:
                n = path.lstat().st_size
                path.unlink()
            except FileNotFoundError:
                continue
            files += 1
            size += n
        return files, size

    def unlink(self, path: Path) -> int:
        """Remove one of the store's own files (as `files()` found it); returns its bytes."""
        try:
            n = path.lstat().st_size
            path.unlink()
        except FileNotFoundError:
            return 0
        return n

    def files(self) -> list[StoreFile]:
        """The checkpoints' files now in the store (one directory listing, then a stat each)."""
        out = []
        try:
            entries = list(os.scandir(self.root))
        except FileNotFoundError:
            return []
        for entry in entries:
            for pattern, kind in _NAMES:
                m = pattern.match(entry.name)
                if m is None:
                    continue
                try:
                    if not entry.is_file(follow_symlinks=False):
                        break
                    size = entry.stat(follow_symlinks=False).st_size
                except FileNotFoundError:  # removed meanwhile
                    break
                out.append(StoreFile(Path(entry.path), kind, uuid.UUID(m.group(1)), size))
                break
        return out

    def usage(self) -> DiskUsage:
        """What the store holds on disk: one walk of the folder (cheap for a few thousand files)."""
        total = staging = archives = compacts = 0
        for folder, _dirs, names in os.walk(self.root):
            in_staging = Path(folder) != self.root
            for name in names:
                try:
                    n = (Path(folder) / name).lstat().st_size
                except FileNotFoundError:
                    continue
                total += n
                if in_staging:
                    staging += n
                elif _NAMES[0][0].match(name):
                    archives += 1
                elif _NAMES[1][0].match(name):
                    compacts += 1
        return DiskUsage(total, archives, compacts, staging)

    @contextlib.contextmanager
    def compact_lock(self, *, wait: bool = True) -> Iterator[bool]:
        """Hold the store's compact lock (an flock: released by the kernel if we die).

        Yields True once held; with wait=False, yields False at once when someone else holds
        it (a compact archive is being built)."""
        self.root.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.root / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                yield False
                return
            try:
                yield True
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)
