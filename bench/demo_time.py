"""Issue 27: `make demo`'s wall time and what it showed, kept as committed evidence.

Runs the demo target (`make demo`: the environment must exist already, as the issue measures
it), times it, and reads the search it ran back from its database: each step's time, the
as-shipped validation errors of the finalists and baselines, and the held-out rows with their
gains and the gains' standard errors over the paired windows. Writes one small JSON file.

    python bench/demo_time.py --out bench/results/demo_fresh_clone.json   # in the clone's root
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

from dtype_speed import cpu_record  # beside this script
from sqlalchemy import select

from service import db
from service.settings import ServiceSettings
from service.tables import Generation, Search


def _search_record(search_id: str) -> dict[str, Any]:
    settings = ServiceSettings()
    engine = db.make_engine(settings.resolved_database_url())
    try:
        with db.make_sessions(engine)() as session:
            search = session.get_one(Search, uuid.UUID(search_id))
            gens = session.scalars(
                select(Generation)
                .where(Generation.search_id == search.id)
                .order_by(Generation.number)
            ).all()
            result = search.result or {}
            held = result.get("held_out") or {}
            scored = [*result.get("rescored", []), *result.get("refitted", [])]
            return {
                "id": search_id,
                "status": str(search.status),
                "steps": [
                    {
                        "number": g.number,
                        "stage": g.stage,
                        "stage_generation": g.stage_generation,
                        "evaluations": g.evaluations,
                        "seconds": round(g.seconds, 1),
                    }
                    for g in gens
                ],
                "search_seconds": result.get("search_seconds"),
                "recommended": result.get("recommended_key"),
                "fallback": result.get("fallback", ""),
                "as_shipped": {
                    c.get("name") or c["key"]: c["objectives"]["error"]
                    for c in [*scored, *result.get("fallbacks", [])]
                },
                "held_out": {
                    "rows": {r["name"]: r["perplexity"] for r in held.get("rows", [])},
                    "gains": held.get("gains", {}),
                    "gain_errors": held.get("gain_errors", {}),
                    "protocol": held.get("protocol", {}),
                },
            }
    finally:
        engine.dispose()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--command", default="make demo")
    args = p.parse_args()
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
    ).stdout.strip()
    start = time.perf_counter()
    run = subprocess.run(args.command, shell=True, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - start
    printed = run.stdout + run.stderr
    print(printed)
    found = re.search(r"search ([0-9a-f-]{36}) queued", printed)
    done = re.search(r"done in (\d+) s", printed)
    record = {
        "command": args.command,
        "commit": commit,
        "exit_code": run.returncode,
        "wall_s": round(wall, 1),
        "cpu": cpu_record(),
        "run_s": int(done.group(1)) if done else None,
        "search": _search_record(found.group(1)) if found else None,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"make demo: {wall:.0f} s in all, exit {run.returncode}; written to {args.out}")
    return run.returncode


if __name__ == "__main__":
    raise SystemExit(main())
