"""The checkpoint store: the folder of exported archives, checked rather than assumed."""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass
from pathlib import Path

from service.settings import ServiceSettings

UNAVAILABLE = "the checkpoint store is unavailable; the server log has the details"
MISSING = "the archive is missing from the checkpoint store: request the export again"


@dataclass(frozen=True)
class CheckpointStore:
    root: Path

    @classmethod
    def of(cls, settings: ServiceSettings) -> CheckpointStore:
        from optishear.settings import LibrarySettings

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

    def archive(self, checkpoint_id: uuid.UUID) -> Path | None:
        """The archive of this export, if it is in the store (links leading out do not count)."""
        root = self.root.resolve()
        # The name is built from the id, never taken from a request.
        path = (root / f"{checkpoint_id}.tar").resolve()
        return path if path.is_relative_to(root) and path.is_file() else None
