"""Issue 14: do discovered metrics carry across models? The bundled model's best genome on another.

On --model (another family than the bundled SmolLM2), with one calibration sample and one
set of held-out windows, three rows are pruned as shipped and measured by perplexity:
- Wanda;
- each --genome given (the bundled model's best classes, from bench/data/metric_truth_*);
- the model's own metric search (the screen of every class, then NSGA-III), unless --no-search.

  python bench/transfer.py --model qwen2.5-0.5b --pattern 2:4 \
      --genomes "f1=identity,f2=identity,alpha=inv_col_sum,beta=one"
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from optishear.config import SearchConfig
from optishear.core.genome import WANDA_GENOME, Genome
from optishear.evaluation.perplexity import perplexity
from optishear.recipe.candidates import Candidate
from optishear.search.evaluator import InProcessEvaluator
from optishear.search.loop import run_search

sys.path.insert(0, str(Path(__file__).parent))
from metric_truth import bench_engine, held_out, log, parse_pattern


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="qwen2.5-0.5b")
    p.add_argument("--pattern", default="2:4")
    p.add_argument("--genomes", default="", help="';'-separated genome specs to transfer")
    p.add_argument("--no-search", action="store_true")
    p.add_argument("--space", default="first_order", choices=("first_order", "second_order"))
    p.add_argument("--rungs", default="1x64")
    p.add_argument("--keep", type=float, default=0.05)
    p.add_argument("--population", type=int, default=16)
    p.add_argument("--generations", type=int, default=1)
    p.add_argument("--nsamples", type=int, default=32)
    p.add_argument("--seqlen", type=int, default=256)
    p.add_argument("--fitness-samples", type=int, default=8)
    p.add_argument("--eval-windows", type=int, default=16)
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args()
    tag = args.pattern.replace(":", "-")
    out_path = args.out or Path(f"bench/out/transfer_{args.model}_{tag}.json")
    pattern, target = parse_pattern(args.pattern)
    engine, tok, cal = bench_engine(
        args, pattern, target, second_order=args.space == "second_order"
    )
    stream, ev = held_out(tok, args.eval_windows)
    out: dict[str, Any] = {"args": vars(args) | {"out": str(out_path)}, "rows": []}
    uniform = (target,) * engine.n_blocks

    def shipped(name: str, genome: Genome, extra: dict[str, Any] | None = None) -> None:
        c = Candidate(genome, uniform)
        e = engine.evaluate(c, shipped=True)
        engine.apply_shipped(c)
        ppl = perplexity(engine.model, stream, ev).perplexity
        engine.restore()
        row = {"row": name, "genome": genome.formula(), "shipped_error": e.error}
        out["rows"].append(row | {"perplexity": ppl, **(extra or {})})
        out_path.parent.mkdir(parents=True, exist_ok=True)
        out_path.write_text(json.dumps(out, indent=2))
        log(f"{name}: {genome.formula()} ppl {ppl:.3f} (shipped error {e.error:.4f})")

    shipped("Wanda", WANDA_GENOME)
    for spec in filter(None, (s.strip() for s in args.genomes.split(";"))):
        shipped("transferred", Genome.parse(spec))
    if not args.no_search:
        config = SearchConfig(
            model=args.model,
            sparsity=target,
            pattern=str(pattern),
            stages="metric",
            metric_space=args.space,
            population=args.population,
            generations=args.generations,
            fitness_samples=args.fitness_samples,
            calibration=cal.model_dump(),
            screen={"rungs": args.rungs, "keep": args.keep},
            rescore_top=3,
        )
        t0 = time.perf_counter()
        result = run_search(InProcessEvaluator(engine), config)
        seconds = time.perf_counter() - t0
        shipped("own search", result.recommended.candidate.genome, {"search_seconds": seconds})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
