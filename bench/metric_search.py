"""Issue 14: the screened metric search against today's NSGA-III metric stage, same wall time.

On one model, calibration sample and pattern (the settings of bench/metric_truth.py), each row
runs a metric-only search on one shared fitness engine (its mask cache cleared between rows),
picks by the as-shipped re-score of its best three, and is measured by held-out perplexity on
the ground truth's windows:
- `screen`: every row-canonical class screened (rungs --rungs, keep --keep), NSGA-III seeded
  with the survivors for --generations generations;
- `proxy`: the same, opened by the layer-wise proxy (--proxy-rungs, --proxy-keep:
  optishear.search.layer_proxy) instead of a full-model rung;
- `nsga3`: NSGA-III from random genomes (population 8, as today), given the screen's wall
  time as its evaluation budget (wall time / seconds of one full evaluation).
The regret is the pick's perplexity over the best perplexity of the ground truth's shipped
classes (bench/data/metric_truth_*.jsonl), which the report reads.

  python bench/metric_search.py --pattern 2:4 --space first_order
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from optishear.config import SearchConfig
from optishear.evaluation.perplexity import perplexity
from optishear.search.evaluator import InProcessEvaluator
from optishear.search.loop import run_search

sys.path.insert(0, str(Path(__file__).parent))
from metric_truth import bench_engine, held_out, parse_pattern, spearman

_START = time.perf_counter()


def log(msg: str) -> None:
    print(f"[{time.perf_counter() - _START:7.1f}s] {msg}", file=sys.stderr, flush=True)


def truth_records(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def best_truth(records: list[dict[str, Any]]) -> float | None:
    ppl = [r["perplexity"] for r in records if r.get("kind") == "shipped"]
    return min(ppl) if ppl else None


def rung_agreement(state_path: Path, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per screening rung: Spearman of its errors with the full-fidelity and as-shipped
    errors of the ground truth, and where the truth's best classes ranked in it."""
    from optishear.core.genome import Genome

    state = json.loads(state_path.read_text())
    full = {r["index"]: r["error"] for r in records if r["kind"] == "full"}
    shipped = {r["index"]: r["shipped_error"] for r in records if r["kind"] == "shipped"}
    rungs: dict[tuple[int, int], dict[int, float]] = {}
    for key, e in state["cache"]["low"]:
        index = Genome.from_index(key[0]).index
        tokens = e[4] if len(e) > 4 else 0
        rungs.setdefault((e[2], tokens), {})[index] = e[0]
    best = sorted(full, key=full.get)[:5]
    out = []
    for (n, t), errors in sorted(rungs.items()):
        common = [i for i in errors if i in full]
        ranked = sorted(errors, key=errors.get)
        row = {
            "sequences": n,
            "tokens": t,
            "classes": len(errors),
            "spearman_full": spearman([errors[i] for i in common], [full[i] for i in common]),
            "truth_top5_ranks": [ranked.index(i) + 1 if i in errors else None for i in best],
        }
        ship = [i for i in errors if i in shipped]
        if len(ship) >= 3:
            row["spearman_shipped"] = spearman(
                [errors[i] for i in ship], [shipped[i] for i in ship]
            )
            row["shipped_classes"] = len(ship)
        out.append(row)
    return out


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--pattern", default="2:4")
    p.add_argument("--space", default="first_order", choices=("first_order", "second_order"))
    p.add_argument("--rungs", default="1x64,2x256")
    p.add_argument("--keep", type=float, default=0.25)
    p.add_argument("--proxy-rungs", default="layers,1x64")
    p.add_argument("--proxy-keep", type=float, default=0.05)
    p.add_argument("--population", type=int, default=16)
    p.add_argument("--generations", type=int, default=2)
    p.add_argument("--rows", default="screen,nsga3")
    p.add_argument("--nsamples", type=int, default=32)
    p.add_argument("--seqlen", type=int, default=256)
    p.add_argument("--fitness-samples", type=int, default=8)
    p.add_argument("--eval-windows", type=int, default=16)
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args()
    tag = args.pattern.replace(":", "-")
    out_path = args.out or Path(f"bench/out/metric_search_{args.model}_{tag}_{args.space}.json")
    records = truth_records(Path(f"bench/data/metric_truth_{args.model}_{tag}.jsonl"))
    truth = best_truth(records)

    pattern, target = parse_pattern(args.pattern)
    engine, tok, cal = bench_engine(
        args, pattern, target, second_order=args.space == "second_order"
    )
    stream, ev_cfg = held_out(tok, args.eval_windows)
    base = {
        "model": args.model,
        "sparsity": target,
        "pattern": str(pattern),
        "stages": "metric",
        "metric_space": args.space,
        "fitness_samples": args.fitness_samples,
        "calibration": cal.model_dump(),
        "rescore_top": 3,
        "seed": 0,
        # the searches are compared, not the published baselines they would fall back to
        "fallback_baselines": False,
    }
    out: dict[str, Any] = {"args": vars(args) | {"out": str(out_path)}, "rows": [], "truth": truth}

    def measure(name: str, config: SearchConfig) -> dict[str, Any]:
        engine.clear_mask_cache()
        state_path = Path("bench/out") / f"{out_path.stem}_{name}_state.json"
        state_path.parent.mkdir(parents=True, exist_ok=True)
        state_path.unlink(missing_ok=True)
        t0 = time.perf_counter()
        result = run_search(InProcessEvaluator(engine), config, state_path=state_path)
        seconds = time.perf_counter() - t0
        pick = result.recommended.candidate
        assert result.recipe is not None
        engine.apply_shipped(result.recipe)
        ppl = perplexity(engine.model, stream, ev_cfg).perplexity
        engine.restore()
        row = {
            "row": name,
            "genome": pick.genome.formula(),
            "spec": pick.genome.spec(),
            "perplexity": ppl,
            "search_seconds": seconds,
            "evaluations": result.evaluations,
            "cost": sum(h.get("cost", 0.0) for h in result.history),
            "regret": ppl / truth - 1 if truth else None,
            "history": result.history,
        }
        if name in ("screen", "proxy") and records:
            row["rungs"] = rung_agreement(state_path, records)
        out["rows"].append(row)
        out_path.parent.mkdir(parents=True, exist_ok=True)
        out_path.write_text(json.dumps(out, indent=2))
        log(f"{name}: {row['genome']} ppl {ppl:.3f} in {seconds:.0f} s, regret {row['regret']}")
        return row

    rows = args.rows.split(",")
    screen_seconds = None
    if "screen" in rows:
        config = SearchConfig(
            **base,
            population=args.population,
            generations=args.generations,
            screen={"rungs": args.rungs, "keep": args.keep},
        )
        screen_seconds = measure("screen", config)["search_seconds"]
    if "proxy" in rows:
        config = SearchConfig(
            **base,
            population=args.population,
            generations=args.generations,
            screen={"rungs": args.proxy_rungs, "keep": args.proxy_keep},
        )
        measure("proxy", config)
    if "nsga3" in rows:
        from optishear.core.genome import Genome
        from optishear.recipe.candidates import Candidate

        one = engine.evaluate(Candidate(Genome.parse("f1=sqrt"), (target,) * engine.n_blocks))
        engine.clear_mask_cache()
        budget = (screen_seconds or 600) / one.seconds
        log(f"one full evaluation {one.seconds:.1f} s: NSGA-III budget {budget:.0f} evaluations")
        config = SearchConfig(
            **base,
            population=8,
            generations=1000,
            max_evaluations=budget,
            screen={"rungs": "off"},
        )
        measure("nsga3", config)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
