"""`optishear serve`, `optishear worker` and `optishear db`: the service's long-running parts."""

from __future__ import annotations

import argparse
import logging
import signal
import subprocess
import sys
from typing import Any

logger = logging.getLogger(__name__)


def db_command(args: argparse.Namespace) -> int:
    from service import db
    from service.settings import get_settings

    url = get_settings().resolved_database_url()
    if args.action == "upgrade":
        db.upgrade(url, args.revision or "head")
    else:
        db.downgrade(url, args.revision or "base")
    return 0


def worker_command(args: argparse.Namespace) -> int:
    from service import db
    from service.runner import QueueRunner
    from service.settings import get_settings

    settings = get_settings()
    url = settings.resolved_database_url()
    db.upgrade(url)  # idempotent; a worker may start before the API
    runner = QueueRunner(settings, db.make_sessions(db.make_engine(url)))

    def stop(_sig: int, _frame: Any) -> None:
        logger.info("stopping after the current generation or export")
        runner.stop.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    runner.run(until_idle=args.once)
    return 0


def serve_command(args: argparse.Namespace) -> int:
    import uvicorn

    from service import db
    from service.app import create_app
    from service.settings import get_settings

    settings = get_settings()
    db.upgrade(settings.resolved_database_url())  # before a runner process starts too
    with_runner = {"yes": True, "no": False}.get(args.runner, settings.runs_embedded_runner())
    child = None
    if with_runner:  # a process, not a thread: a search's CPU work never stalls the API
        child = subprocess.Popen([sys.executable, "-m", "service.commands", "worker"])
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
    return 0
