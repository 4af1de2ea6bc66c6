"""Recompute the tables of bench/RESULTS.md from the committed results in bench/results/.

Every table carries a marker line, `<!-- verify: NAME -->`, right above it; NAME is one of
the renderers in verify_tables.py or verify_baselines.py, each of which builds its table from
the files it names. The script renders every marked table and compares it, line for line, with
the table under its marker; it exits 1 on any difference, on an unknown name and on a table
without a marker (older measurements, whose outputs were never committed, live in
bench/HISTORY.md, which this script does not read).

    python bench/verify.py            # check
    python bench/verify.py --print    # print the rendered tables (to paste a new one)
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from verify_baselines import RENDERERS as BASELINE_RENDERERS  # beside this script
from verify_tables import RENDERERS as TABLE_RENDERERS

RENDERERS = {**TABLE_RENDERERS, **BASELINE_RENDERERS}

ROOT = Path(__file__).resolve().parent
MARKER = re.compile(r"^<!-- verify: ([a-z0-9_]+) -->$")


def _table_after(lines: list[str], start: int) -> list[str]:
    out = []
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        out.append(line)
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--results", type=Path, default=ROOT / "RESULTS.md")
    p.add_argument("--print", action="store_true", help="print every rendered table")
    args = p.parse_args()
    if args.print:
        for name, render in RENDERERS.items():
            print(f"<!-- verify: {name} -->\n" + "\n".join(render()) + "\n")
        return 0
    lines = args.results.read_text().splitlines()
    failures, checked, marked_tables = [], 0, set()
    for i, line in enumerate(lines):
        m = MARKER.match(line)
        if not m:
            continue
        name = m.group(1)
        if name not in RENDERERS:
            failures.append(f"line {i + 1}: no renderer named {name!r}")
            continue
        marked_tables.add(i + 1)
        written = _table_after(lines, i + 1)
        try:
            rendered = RENDERERS[name]()
        except FileNotFoundError as missing:
            failures.append(f"line {i + 1}: table {name!r} needs {missing.filename}, not committed")
            continue
        checked += 1
        if written != rendered:
            failures.append(
                f"line {i + 1}: table {name!r} differs from its results:\n  written:\n    "
                + "\n    ".join(written)
                + "\n  from bench/results:\n    "
                + "\n    ".join(rendered)
            )
    unmarked = [
        i + 1
        for i, line in enumerate(lines)
        if line.startswith("|---") and i >= 1 and (i - 1) not in marked_tables
    ]
    failures += [f"line {n - 1}: a table without a verify marker" for n in unmarked]
    for failure in failures:
        print(f"bench/verify.py: {failure}", file=sys.stderr)
    print(
        f"bench/verify.py: {checked} tables recomputed from bench/results/ and bench/data/, "
        f"{len(failures)} failures"
    )
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
