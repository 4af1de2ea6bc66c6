"""The API's short-lived copies of search status answers, for dashboards that poll.

A search's status changes once per generation (seconds to minutes apart), but a dashboard, or
sixteen of them, polls it many times a second. Each answer read from the database costs a trip
to a worker thread, a session and a serialization: on a 2-core machine that also runs the
search, those trips queue behind one another (bench/RESULTS.md, "Status polls"). A copy of the
serialized answer, kept for `seconds`, answers the polls in between on the event loop itself.

Staleness is bounded by `seconds`; this process's own writes to a search (cancel, delete) drop
its copy at once. The owner is kept beside the answer, so that every hit is still checked
against the caller's key; a search being deleted is never cached.
"""

from __future__ import annotations

import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class CachedStatus:
    owner: str
    body: bytes  # the JSON answer, as served
    at: float


class StatusCache:
    """Serialized status answers by search id, each kept `seconds` (0: nothing is kept)."""

    def __init__(
        self, seconds: float, max_entries: int = 4096, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.seconds = seconds
        self.max_entries = max_entries
        self._clock = clock
        self._entries: OrderedDict[uuid.UUID, CachedStatus] = OrderedDict()

    def get(self, search_id: uuid.UUID) -> CachedStatus | None:
        entry = self._entries.get(search_id)
        if entry is None:
            return None
        if self._clock() - entry.at >= self.seconds:
            del self._entries[search_id]
            return None
        return entry

    def put(self, search_id: uuid.UUID, owner: str, body: bytes) -> None:
        if self.seconds <= 0:
            return
        self._entries[search_id] = CachedStatus(owner, body, self._clock())
        self._entries.move_to_end(search_id)
        while len(self._entries) > self.max_entries:  # the least recently written go first
            self._entries.popitem(last=False)

    def drop(self, search_id: uuid.UUID) -> None:
        self._entries.pop(search_id, None)
