"""Markdown tables from bench/allocation.py's JSON files (bench/HISTORY.md, issue 13).

Perplexity is deterministic for a calibration and held-out text, so the baselines measured
with the same settings in `optishear compare` runs (bench/RESULTS.md, "Baselines at 60% and
70%", and issue 2 at 50%) are given with `--known` instead of being pruned again.
Run: python bench/allocation_report.py bench/out/alloc_smol_*.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

# SmolLM2-135M, calibration 32 x 256 seed 0, held-out 32 x 512 (bench/RESULTS.md)
KNOWN = {
    "0.5": {"wanda": 52.993, "owl+wanda": 53.186, "sparsegpt": 48.541},
    "0.6": {"wanda": 148.474, "owl+wanda": 143.068, "sparsegpt": 95.476, "owl+sparsegpt": 89.205},
    "0.7": {"wanda": 958.021, "owl+wanda": 809.141, "sparsegpt": 259.733, "owl+sparsegpt": 257.076},
    "2:4@0.45": {
        "wanda, every layer 2:4 (50%)": 187.923,
        "sparsegpt, every layer 2:4 (50%)": 93.054,
    },
}


def _pct(a: float, b: float) -> str:
    return f"{(a / b - 1) * 100:+.1f}%"


def main(paths: list[str]) -> int:
    known = "--known" in paths
    files = [Path(p) for p in paths if p != "--known"]
    for path in files:
        data = json.loads(path.read_text())
        rows: list[dict[str, Any]] = data["rows"]
        if not rows:
            continue
        target = rows[0]["target"]
        ppl = {r["row"]: r["perplexity"] for r in rows}
        if known and data["args"]["model"] == "smollm2-135m":
            for name, value in KNOWN.get(target, {}).items():
                ppl.setdefault(name, value)
        print(
            f"\n### {data['args']['model']}, target {target} (dense {data['dense']['perplexity']:.3f})\n"
        )
        print("| row | held-out ppl | achieved | search s | evaluations (cost) | database |")
        print("|---|---|---|---|---|---|")
        for name, value in ppl.items():
            r = next((x for x in rows if x["row"] == name), None)
            if r is None:
                print(f"| {name} (same settings, earlier run) | {value:.3f} | | | | |")
                continue
            search = f"{r['search_seconds']:.0f}" if "search_seconds" in r else ""
            evals = f"{r['evaluations']} ({r['cost']:.0f})" if "evaluations" in r else ""
            db = ""
            if r.get("database"):
                db = f"{r['database_bytes'] / 2**30:.2f} GiB, {r['database_seconds']:.0f} s"
            print(f"| {name} | {value:.3f} | {r['achieved']:.4f} | {search} | {evals} | {db} |")
        cost = [r for r in rows if r.get("candidate_seconds") and r.get("engine_forward_seconds")]
        if cost:
            parts = ", ".join(
                f"{r['row'].rsplit(', shipped', 1)[0]}: {r['candidate_seconds']:.2f} s / "
                f"{r['engine_forward_seconds']:.2f} s = "
                f"{r['candidate_seconds'] / r['engine_forward_seconds']:.2f}"
                for r in cost
                if "shipped masks" in r["row"] or "refit db" in r["row"]
            )
            print(f"\nfull-fidelity candidate / one dense forward in the engine: {parts}")
        pairs = [
            ("layer search, refit db, shipped refit", "uniform+refit"),
            ("layer search, refit db, shipped refit", "owl+sparsegpt"),
            ("layer search, mask db, shipped masks", "owl+wanda"),
            ("layer search, mask db, shipped masks", "block search, shipped masks"),
            ("layer search, refit db, shipped refit", "block search, shipped refit"),
        ]
        got = [f"{a} vs {b}: {_pct(ppl[a], ppl[b])}" for a, b in pairs if a in ppl and b in ppl]
        if got:
            print("\n" + "; ".join(got))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
