"""A log line at least every so often during long work: counts, best so far, time left.

Progress bars only show on a terminal; a search whose output goes to a file or a pipe would
print nothing for the whole of a long screening rung or layer database. A Heartbeat logs
`done/total` (and the best error so far, and an estimate of the time left from the rate so far)
whenever `seconds` have passed since its last line, and never more often. A `listener` hears
every step as an Activity, for whoever shows progress elsewhere (the service's API).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

LOG_SECONDS = 30.0


@dataclass(frozen=True)
class Activity:
    """What long work is doing now: `done` of `total` steps, the best error among them, the
    seconds it has taken and (from its rate so far) the seconds left."""

    what: str
    done: int
    total: int
    best_error: float | None
    elapsed: float
    eta: float | None


Listener = Callable[[Activity], None]


class Heartbeat:
    """Logs `what`'s progress through `total` steps at most once every `seconds`."""

    def __init__(
        self,
        logger: logging.Logger,
        what: str,
        total: int,
        seconds: float | None = None,
        clock: Callable[[], float] | None = None,
        listener: Listener | None = None,
    ) -> None:
        self.logger = logger
        self.what = what
        self.total = total
        self.seconds = LOG_SECONDS if seconds is None else seconds
        self._clock = clock or time.monotonic
        self._start = self._last = self._clock()
        self.best = math.inf
        self.lines = 0
        self.finished = 0  # the last `done` stepped to
        self._lock = threading.Lock()  # a step and the timer thread's line never interleave
        self.listener = listener
        if listener is not None:
            listener(Activity(what, 0, total, None, 0.0, None))

    def step(self, done: int, best: float | None = None) -> None:
        """`done` of `total` steps are complete; `best` is the lowest error among them."""
        if best is not None:
            self.best = min(self.best, best)
        self.finished = done
        now = self._clock()
        elapsed, left = self._timing(now)
        if self.listener is not None:
            best_error = self.best if math.isfinite(self.best) else None
            eta = left if math.isfinite(left) else None
            self.listener(Activity(self.what, done, self.total, best_error, elapsed, eta))
        with self._lock:
            if now - self._last >= self.seconds and done < self.total:
                self._line(now)

    @contextmanager
    def ticking(self) -> Iterator[Heartbeat]:
        """Also log while no step comes: a timer thread writes the line whenever `seconds`
        pass without one, so that a single long step (a refit of minutes) never leaves the
        log quiet."""
        stop = threading.Event()

        def tick() -> None:
            while not stop.wait(max(self.seconds, 0.01)):
                with self._lock:
                    now = self._clock()
                    if now - self._last >= self.seconds and self.finished < self.total:
                        self._line(now)

        thread = threading.Thread(target=tick, name=f"heartbeat: {self.what}", daemon=True)
        thread.start()
        try:
            yield self
        finally:
            stop.set()
            thread.join()

    def _timing(self, now: float) -> tuple[float, float]:
        """Seconds so far, and left at the rate so far (nan before the first step)."""
        elapsed = now - self._start
        done = self.finished
        return elapsed, elapsed / done * (self.total - done) if done else math.nan

    def _line(self, now: float) -> None:
        done = self.finished
        elapsed, left = self._timing(now)
        self._last = now
        best_text = f", best error {self.best:.5g}" if math.isfinite(self.best) else ""
        left_text = f", about {left:.0f} s left" if math.isfinite(left) else ""
        self.logger.info(
            "%s: %d/%d done%s, %.0f s%s",
            self.what,
            done,
            self.total,
            best_text,
            elapsed,
            left_text,
        )
        self.lines += 1
