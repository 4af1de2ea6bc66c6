"""What a job sees of the runner that works it: the protocol that the job modules (search_job,
export_job, measure_job, staging) type against and that QueueRunner (loop) implements, so that
the loop imports the jobs and no job imports the loop back."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Protocol, TypeVar

from sqlalchemy.orm import Session, sessionmaker

from optishear.core.settings import LibrarySettings
from service.settings import ServiceSettings

T = TypeVar("T")


class JobContext(Protocol):
    """The runner as a job uses it."""

    id: str  # the runner's id, as its lease and staging folder name it
    settings: ServiceSettings
    library: LibrarySettings
    sessions: sessionmaker[Session]  # write sessions
    stop: threading.Event  # set when the runner is asked to stop
    lost: threading.Event  # set by the heartbeat when another runner took the job

    def write(self, fn: Callable[[Session], T], what: str) -> T:
        """Run `fn` in a write transaction, retried through database outages."""
        ...
