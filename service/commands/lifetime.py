"""The runner child of `optishear serve` lives no longer than its parent, even after kill -9.

Two mechanisms, since neither covers every case alone:

* Linux: the child asks the kernel for SIGTERM when its parent dies (prctl PR_SET_PDEATHSIG),
  then re-checks os.getppid(): a parent that died before the prctl would send nothing.
* POSIX: a pipe whose write end only the parent holds. The kernel closes a dead process's
  descriptors, SIGKILL included, so the child's blocking read returns EOF.

Either way the child stops as on SIGTERM (its search goes back to the queue after the current
generation), but within ORPHAN_GRACE_SECONDS: past that it exits hard and its lease expires.
The parent pid and the pipe travel as hidden `worker` flags, not environment variables, which
the runner's own children (Ray) would inherit.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable

logger = logging.getLogger(__name__)

ORPHAN_GRACE_SECONDS = 30.0
_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


class Lifeline:
    """Parent side: the pipe. Keep the object (its write end) open for as long as we live."""

    def __init__(self) -> None:
        # Both ends are non-inheritable: only the child gets the read end (pass_fds), and
        # no other process ever holds the write end, which would hide our death.
        self.read_fd, self.write_fd = os.pipe()

    def child_args(self) -> list[str]:
        return ["--parent-pid", str(os.getpid()), "--parent-fd", str(self.read_fd)]

    def started(self) -> None:
        """The child has its copy of the read end: ours would only leak."""
        os.close(self.read_fd)

    def close(self) -> None:
        os.close(self.write_fd)


def lifeline() -> Lifeline | None:
    """A Lifeline where descriptors can be passed to a child (POSIX), else None."""
    return Lifeline() if os.name == "posix" else None


def _exit_now() -> None:
    os._exit(1)  # nothing claimed yet: nothing to hand back


def _hard_exit(grace: float) -> None:
    logger.error("still running %g s after the parent died: exiting", grace)
    logging.shutdown()
    os._exit(1)  # our lease expires and another runner resumes the job


class ParentWatch:
    """Child side: calls `on_orphan` once when the parent is gone, then exits hard after
    `grace` seconds if the process is still alive. Until the runner exists, `on_orphan`
    exits at once; the worker then points it at the runner's stop event."""

    def __init__(
        self, parent_pid: int, fd: int | None, *, grace: float = ORPHAN_GRACE_SECONDS
    ) -> None:
        self.parent_pid = parent_pid
        self.fd = fd
        self.grace = grace
        self.on_orphan: Callable[[], None] = _exit_now
        self._lock = threading.RLock()  # check() may run again in a signal handler
        self._fired = False

    def start(self) -> ParentWatch:
        _ask_parent_death_signal(signal.SIGTERM)
        if self.fd is not None:
            os.set_inheritable(self.fd, False)  # the runner's own children need not hold it
            threading.Thread(target=self._read, name="parent-pipe", daemon=True).start()
        self.check()  # after the prctl: the parent may have died before it
        return self

    def check(self) -> bool:
        """True (and the orphan path taken) when our parent is no longer the one we had."""
        if os.getppid() == self.parent_pid:
            return False
        self.orphaned(f"now a child of {os.getppid()}")
        return True

    def orphaned(self, why: str) -> None:
        with self._lock:
            if self._fired:
                return
            self._fired = True
        logger.warning(
            "parent process %d is gone (%s): stopping within %g s", self.parent_pid, why, self.grace
        )
        timer = threading.Timer(self.grace, _hard_exit, args=(self.grace,))
        timer.daemon = True  # a runner that stops in time exits without waiting for it
        timer.start()
        self.on_orphan()

    def _read(self) -> None:
        assert self.fd is not None
        while True:
            try:
                data = os.read(self.fd, 64)
            except InterruptedError:
                continue
            except OSError as exc:  # a closed or bad descriptor: the parent cannot be watched
                logger.warning("cannot watch the parent through fd %d: %s", self.fd, exc)
                return
            if not data:  # EOF: every write end is closed, so the parent is gone
                self.orphaned("its pipe closed")
                return


def _ask_parent_death_signal(sig: int) -> None:
    """Linux only: the kernel sends `sig` when the parent (the thread that forked us) dies."""
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)  # our own symbols: libc's, no library search
        if libc.prctl(_PR_SET_PDEATHSIG, ctypes.c_ulong(sig), 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))
    except (OSError, AttributeError) as exc:  # the pipe still covers us
        logger.warning("prctl(PR_SET_PDEATHSIG) unavailable: %s", exc)
