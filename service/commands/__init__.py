"""`optishear serve`, `worker`, `run`, `db upgrade|downgrade` and `store` (service/commands/).

Registered through the `optishear.commands` entry point, so the library never imports the
service. Heavy imports happen inside the handlers: building the parser stays cheap. The
flags of `optishear run` are generated from the API's request model (optishear.cli.flags).
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any

from optishear.cli.flags import add_config_flags
from optishear.core.errors import OptiShearError
from service.commands.run import run_command
from service.commands.serve import db_command, serve_command, worker_command
from service.commands.store import register as register_store
from service.schemas import SearchCreate


def register(sub: Any) -> None:
    serve = sub.add_parser("serve", help="run the REST API (and, for SQLite, a runner beside it)")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument(
        "--runner",
        choices=("auto", "yes", "no"),
        default="auto",
        help="start a runner process beside the API (auto: with the embedded SQLite database)",
    )
    serve.set_defaults(plugin_handler=serve_command)

    worker = sub.add_parser("worker", help="claim and run queued searches and exports")
    worker.add_argument("--once", action="store_true", help="exit when the queue is empty")
    # Internal, set by `serve` for its runner child: stop when that process dies (lifetime.py).
    worker.add_argument("--parent-pid", type=int, default=None, help=argparse.SUPPRESS)
    worker.add_argument("--parent-fd", type=int, default=None, help=argparse.SUPPRESS)
    worker.set_defaults(plugin_handler=worker_command)

    run = sub.add_parser(
        "run",
        help="queue a search, run it in this process and export its recommended checkpoint",
        description="Submit a search to the queue in the configured database (as POST "
        "/api/searches does), work the queue in this process until it finishes, export the "
        "recommended candidate and print the front, the baselines and the checkpoint. The "
        "search stays in the database: `optishear serve` shows it afterwards.",
    )
    add_config_flags(run, SearchCreate, skip=("metric_from",))  # its two flags follow
    run.add_argument(
        "--metric-from",
        metavar="SEARCH_ID",
        default=None,
        help="take genomes from a search that succeeded in this database (GET /api/genomes "
        "lists them): as seeds of the metric search, or as the fixed metric (--metric-use)",
    )
    run.add_argument(
        "--metric-use",
        choices=("seed", "fixed"),
        default=None,
        help="seed: its best genomes start the metric search; fixed: its best genome is the "
        "metric and only the per-block plan is searched (unstructured only) (default seed)",
    )
    run.add_argument(
        "--workers",
        type=int,
        default=None,
        help="Ray actors evaluating candidates for this run (OPTISHEAR_WORKERS; 0: in this "
        "process; default: the setting's value)",
    )
    run.set_defaults(plugin_handler=run_command)

    dbp = sub.add_parser("db", help="database schema (Alembic)")
    dbp.add_argument("action", choices=("upgrade", "downgrade"))
    dbp.add_argument("revision", nargs="?", default=None, help="default head / base")
    dbp.set_defaults(plugin_handler=db_command)

    register_store(sub)


def main(argv: list[str] | None = None) -> int:
    """`python -m service.commands worker` (what `optishear serve` starts beside the API)."""
    parser = argparse.ArgumentParser(prog="optishear")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args.plugin_handler(args))
    except OptiShearError as exc:  # as the `optishear` command reports it (optishear.cli)
        print(f"optishear: error: {exc}", file=sys.stderr)  # noqa: T201
        return 2


if __name__ == "__main__":
    sys.exit(main())
