"""`optishear store list|stats|sweep|delete-search|delete-checkpoint`: the checkpoint store,
on the configured database and folder (OPTISHEAR_DATABASE_URL, OPTISHEAR_CHECKPOINT_DIR, as
`serve` and `run` read them), through the API's own functions (service.housekeeping)."""

from __future__ import annotations

import argparse
import logging
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from service.housekeeping import Housekeeping
    from service.store_sweep import Removed


def register(sub: Any) -> None:
    store = sub.add_parser(
        "store",
        help="list, measure, sweep and delete what the checkpoint store holds",
        description="Work on the configured database and checkpoint store directly, as the "
        "API does: deletes are refused while the job is queued or running, and reclaim the "
        "disk. `sweep` finishes deletes a crash interrupted, removes archives no checkpoint "
        "owns and applies retention (OPTISHEAR_KEEP_CHECKPOINTS, OPTISHEAR_STORE_MAX_BYTES).",
    )
    actions = store.add_subparsers(dest="store_action", required=True)
    actions.add_parser("list", help="searches and their checkpoints, with their sizes")
    stats = actions.add_parser("stats", help="the store's bytes, archives and jobs by status")
    stats.add_argument("--json", action="store_true", help="as GET /api/stats answers")
    actions.add_parser("sweep", help="finish interrupted deletes, remove orphans, retention")
    for kind in ("search", "checkpoint"):
        one = actions.add_parser(
            f"delete-{kind}",
            help=f"delete a finished {kind}"
            + (" with its checkpoints and their archives" if kind == "search" else ""),
        )
        one.add_argument("id", metavar=f"{kind.upper()}_ID")
    store.set_defaults(plugin_handler=store_command)


def store_command(args: argparse.Namespace) -> int:
    with _housekeeping(verbose=getattr(args, "verbose", False)) as hk:
        action = args.store_action
        if action == "list":
            _list(hk)
        elif action == "stats":
            _stats(hk, as_json=args.json)
        elif action == "sweep":
            _sweep(hk)
        elif action == "delete-search":
            search_id = _id(args.id, "search")
            _say(f"deleted search {search_id}: {_removed(hk.delete_search(search_id))}")
        else:
            checkpoint_id = _id(args.id, "checkpoint")
            _say(
                f"deleted checkpoint {checkpoint_id}: {_removed(hk.delete_checkpoint(checkpoint_id))}"
            )
    return 0


@contextmanager
def _housekeeping(*, verbose: bool) -> Iterator[Housekeeping]:
    from service import db
    from service.housekeeping import Housekeeping
    from service.settings import get_settings
    from service.store import CheckpointStore

    settings = get_settings()
    url = settings.resolved_database_url()
    root = logging.getLogger()
    level = root.level
    if not verbose:  # what was done is printed; the log's lines on -v
        root.setLevel(logging.WARNING)
    engine = None
    try:
        with db.unreachable_as_error(url):  # one line, not a traceback
            db.upgrade(url)  # as `serve` and `run` do: the rows need this schema
            engine = db.make_engine(url)
            yield Housekeeping(db.make_sessions(engine), CheckpointStore.of(settings), settings)
    finally:
        root.setLevel(level)
        if engine is not None:
            engine.dispose()


def _id(text: str, kind: str) -> uuid.UUID:
    from optishear.core.errors import ConfigError

    try:
        return uuid.UUID(text)
    except ValueError:
        raise ConfigError(f"{text!r} is not a {kind} id (a UUID)") from None


def _say(line: str = "") -> None:
    print(line, flush=True)  # noqa: T201 - the command's output is its interface


def _mb(n: int | None) -> str:
    return "-" if n is None else f"{n / 1e6:.1f} MB"


def _removed(r: Removed) -> str:
    return (
        f"{r.checkpoints} checkpoint{'s' * (r.checkpoints != 1)}, "
        f"{r.files} file{'s' * (r.files != 1)}, {_mb(r.bytes)} reclaimed"
    )


def _list(hk: Housekeeping) -> None:
    entries = hk.inventory()
    if not entries:
        _say(f"no searches (store {hk.store.root})")
        return
    for s in entries:
        n = len(s.checkpoints)
        _say(
            f"search {s.id}  {s.status:<9}  {s.model}  {s.created_at:%Y-%m-%d %H:%M}  "
            f"{n} checkpoint{'s' * (n != 1)}, {_mb(s.on_disk)} on disk"
        )
        for c in s.checkpoints:
            compact = f" + compact {_mb(c.compact_bytes)}" if c.compact_bytes else ""
            _say(
                f"  checkpoint {c.id}  {c.status:<9}  {_mb(c.size_bytes)}{compact}  "
                f"({_mb(c.on_disk)} on disk)"
            )
    checkpoints = sum(len(s.checkpoints) for s in entries)
    on_disk = sum(s.on_disk for s in entries)
    _say(
        f"{len(entries)} searches, {checkpoints} checkpoints, {_mb(on_disk)} on disk "
        f"(store {hk.store.root})"
    )


def _stats(hk: Housekeeping, *, as_json: bool) -> None:
    stats = hk.stats()
    if as_json:
        _say(stats.model_dump_json(indent=2))
        return
    u, r = stats.store, stats.retention
    _say(
        f"store        {hk.store.root}: {_mb(u.disk_bytes)} on disk ({_mb(u.staging_bytes)} "
        f"staging), {_mb(u.recorded_bytes)} recorded; {u.archives} archives, "
        f"{u.compact_archives} compact"
    )
    for name, counts in (("searches", stats.searches), ("checkpoints", stats.checkpoints)):
        _say(f"{name:<12} " + ", ".join(f"{k} {v}" for k, v in counts.model_dump().items()))
    limits = [
        f"keep the newest {r.keep_checkpoints}" if r.keep_checkpoints else None,
        f"at most {_mb(r.store_max_bytes)}" if r.store_max_bytes else None,
    ]
    _say("retention    " + ("; ".join(x for x in limits if x) or "off"))


def _sweep(hk: Housekeeping) -> None:
    report = hk.sweep()
    _say(f"interrupted deletes finished: {report.finished.searches} searches, "
         f"{_removed(report.finished)}")  # fmt: skip
    _say(f"orphan files removed: {report.orphans.files}, {_mb(report.orphans.bytes)} reclaimed")
    _say(f"lost archives (checkpoints marked failed): {report.lost}")
    _say(f"retention: {_removed(report.retention)}")
