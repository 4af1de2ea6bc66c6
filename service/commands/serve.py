"""`optishear serve`, `optishear worker` and `optishear db`: the service's long-running parts."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import subprocess
import sys
from typing import Any

from service.commands import lifetime

logger = logging.getLogger(__name__)


def db_command(args: argparse.Namespace) -> int:
    from service import db
    from service.settings import get_settings

    url = get_settings().resolved_database_url()
    with db.unreachable_as_error(url):  # one line, not Alembic's traceback
        if args.action == "upgrade":
            db.upgrade(url, args.revision or "head")
        else:
            db.downgrade(url, args.revision or "base")
    return 0


def _migrate_when_ready(url: str, wait_seconds: float) -> None:
    """Wait for the database (it may start after us, as in docker compose), then migrate."""
    from service import db

    db.wait_for_database(url, wait_seconds)
    with db.unreachable_as_error(url):
        db.upgrade(url)  # idempotent: a worker may start before the API


def _lower_priority(nice: int) -> None:
    """A runner's torch threads yield the CPU to an API on the same machine: without this, a
    search on a small machine puts its evaluation bursts in front of every status poll."""
    if nice and hasattr(os, "nice"):
        try:
            os.nice(nice)
        except OSError as exc:  # not allowed here: run at normal priority
            logger.warning("could not lower the runner's priority: %s", exc)


def worker_command(args: argparse.Namespace) -> int:
    # First of all: a runner child of `serve` must not outlive it, even while it starts.
    watch = None
    if args.parent_pid is not None:
        watch = lifetime.ParentWatch(args.parent_pid, args.parent_fd).start()

    from service import db
    from service.runner import QueueRunner
    from service.settings import get_settings

    settings = get_settings()
    _lower_priority(settings.runner_nice)
    url = settings.resolved_database_url()
    _migrate_when_ready(url, settings.startup_wait_seconds)
    runner = QueueRunner(settings, db.make_sessions(db.make_engine(url)))

    def stop(_sig: int, _frame: Any) -> None:
        logger.info("stopping after the current generation or export")
        runner.stop.set()
        if watch is not None:  # a parent-death signal? Then bound the stop in time too.
            # getppid() may still name a parent whose other threads are dying: the pipe's
            # EOF, a moment later, arms the bound in that case.
            watch.check()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    if watch is not None:  # from now on the parent's death hands the job back first
        watch.on_orphan = runner.stop.set
    runner.run(until_idle=args.once)
    return 0


def serve_command(args: argparse.Namespace) -> int:
    import uvicorn

    from service.app import create_app
    from service.settings import get_settings

    settings = get_settings()
    _migrate_when_ready(settings.resolved_database_url(), settings.startup_wait_seconds)
    with_runner = {"yes": True, "no": False}.get(args.runner, settings.runs_embedded_runner())
    child = line = None
    if with_runner:  # a process, not a thread: a search's CPU work never stalls the API
        line = lifetime.lifeline()
        # Started from this (the main) thread, which lives as long as we do: the child's
        # parent-death signal fires when the forking thread ends, not the process.
        child = subprocess.Popen(
            [sys.executable, "-m", "service.commands", "worker"]
            + (line.child_args() if line else ["--parent-pid", str(os.getpid())]),
            pass_fds=(line.read_fd,) if line else (),
        )
        if line is not None:
            line.started()
        logger.info("runner process %d started", child.pid)
    received: list[int] = []

    def note(sig: int, _frame: Any) -> None:
        received.append(sig)

    # Uvicorn re-raises the signal that stopped it once it has shut down; with our handler
    # in place that does not kill this process before the runner child is stopped.
    signal.signal(signal.SIGTERM, note)
    signal.signal(signal.SIGINT, note)
    try:
        uvicorn.run(create_app(settings, migrate=False), host=args.host, port=args.port)
    finally:
        if child is not None:
            child.terminate()  # the runner hands its search back after the current generation
            try:
                child.wait(timeout=120)
            except subprocess.TimeoutExpired:
                child.kill()  # its lease expires and another runner resumes the search
        if line is not None:  # only now: closing it earlier would cut the child's 120 s
            line.close()
    return 0
