"""A search with and without the kept block outputs (optishear.search.prefix), side by side.

The same search runs twice per row on one engine, in alternating order, once keeping the block
outputs of recent candidates (the default) and once running every block of every candidate.
Reuse is bit-exact, so both runs see the same candidates and return the same errors: this
checks that, and measures the time spent inside the engine's candidate evaluations (the
search's finish, which prunes its finalists as shipped, is left out; no baselines) and the
share of blocks skipped. The dense forward over the fitness sequences (the model's forward,
logits included) is timed in the same process for the ratio per full-fidelity candidate.

    .venv/bin/python bench/prefix_reuse.py --out bench/results/prefix_reuse_smollm2-135m.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

from optishear.config import SearchConfig
from optishear.core.genome import WANDA_GENOME
from optishear.data.text import sample_calibration
from optishear.model.hf import load_model
from optishear.search.engine_spec import engine_for, search_validation
from optishear.search.evaluator import InProcessEvaluator
from optishear.search.loop import run_search

ROWS: dict[str, dict[str, Any]] = {
    # the per-layer allocation at 70% from a mask database, (1+lambda)
    "allocation 70% mask db": {"stages": "allocation", "sparsity": 0.7},
    # the same with SparseGPT's update stored per layer (scored refit)
    "allocation 70% refit db": {
        "stages": "allocation",
        "sparsity": 0.7,
        "allocation": {"refit": True},
    },
    # 2:4 with dense exceptions at 45% overall
    "allocation 2:4 at 45%": {"stages": "allocation", "sparsity": 0.45, "pattern": "2:4"},
    # the per-block stage (NSGA-III over block offsets), Wanda's metric
    "per-block 70%": {"stages": "layerwise", "sparsity": 0.7, "genome": WANDA_GENOME},
}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--rows", default=",".join(ROWS))
    parser.add_argument("--nsamples", type=int, default=32, help="calibration sequences")
    parser.add_argument("--seqlen", type=int, default=256)
    parser.add_argument("--fitness-samples", type=int, default=16)
    parser.add_argument("--budget", type=float, default=24, help="full-evaluation equivalents")
    parser.add_argument("--population", type=int, default=8)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    out: dict[str, Any] = {"command": "bench/prefix_reuse.py " + " ".join(sys.argv[1:]), "rows": []}

    def log(msg: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)

    model, tokenizer, _ = load_model(args.model)
    for name in args.rows.split(","):
        out["rows"].append(_row(name, model, tokenizer, args, log))
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(out, indent=1) + "\n")
    return 0


def _row(
    name: str, model: Any, tokenizer: Any, args: argparse.Namespace, log: Any
) -> dict[str, Any]:
    config = SearchConfig(
        model=args.model,
        population=args.population,
        generations=1000,
        max_evaluations=args.budget,
        fitness_samples=args.fitness_samples,
        fallback_baselines=False,
        compare_baselines=False,
        calibration={"n_samples": args.nsamples, "seq_len": args.seqlen},
        **ROWS[name],
    )
    calib = sample_calibration(tokenizer, config.calibration)
    valid = search_validation(tokenizer, config, None)
    t0 = time.perf_counter()
    engine = engine_for(model, calib, config, valid_ids=valid)
    log(f"{name}: engine set up in {time.perf_counter() - t0:.1f} s")
    fitness = engine.valid_ids[: engine.n_fitness]

    def dense_forward() -> float:
        engine.restore()
        start = time.perf_counter()
        for i in range(0, fitness.shape[0], engine.batch_size):
            model(fitness[i : i + engine.batch_size], use_cache=False)
        return time.perf_counter() - start

    budget = engine._prefix.budget
    evaluate = engine.evaluate
    runs: dict[bool, list[dict[str, Any]]] = {True: [], False: []}
    forwards = [dense_forward()]
    for keep in (False, True, True, False):  # alternating, each first once
        engine._prefix.clear()
        engine._prefix.budget = budget if keep else 0
        run0, skip0 = engine.prefix_stats.run, engine.prefix_stats.skipped
        spent = [0.0, 0]  # seconds inside the engine's candidate evaluations, and how many

        def timed(*a: Any, _evaluate: Any = evaluate, _spent: list = spent, **kw: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return _evaluate(*a, **kw)
            finally:
                _spent[0] += time.perf_counter() - t0
                _spent[1] += 1

        engine.evaluate = timed  # type: ignore[method-assign]
        start = time.perf_counter()
        result = run_search(InProcessEvaluator(engine), config)
        seconds = time.perf_counter() - start
        engine.evaluate = evaluate  # type: ignore[method-assign]
        run, skipped = engine.prefix_stats.run - run0, engine.prefix_stats.skipped - skip0
        errors = [
            (s.candidate.label(), s.evaluation.error, s.evaluation.n_samples)
            for st in result.stages
            for s in st.population
        ]
        runs[keep].append(
            {
                "seconds": seconds,
                "evaluate_seconds": spent[0],
                "evaluations": spent[1],
                "blocks_run": run,
                "blocks_skipped": skipped,
                "best_error": result.recommended.evaluation.error,
                "errors": errors,
            }
        )
        log(
            f"  kept outputs {keep}: {seconds:.1f} s ({spent[0]:.1f} s evaluating), "
            f"{spent[1]} evaluations, "
            f"{skipped}/{run + skipped} blocks skipped, best {result.recommended.evaluation.error:.6f}"
        )
        forwards.append(dense_forward())
    identical = all(r["errors"] == runs[True][0]["errors"] for r in runs[True] + runs[False])
    on = statistics.mean(r["evaluate_seconds"] for r in runs[True])
    off = statistics.mean(r["evaluate_seconds"] for r in runs[False])
    evaluations = runs[True][0]["evaluations"]
    forward = statistics.median(forwards)
    skipped = runs[True][0]["blocks_skipped"]
    total = skipped + runs[True][0]["blocks_run"]
    row = {
        "row": name,
        "config": config.model_dump(mode="json", exclude_defaults=True),
        "dense_forward_s": forward,
        "evaluations": evaluations,
        "seconds_kept": [r["evaluate_seconds"] for r in runs[True]],
        "seconds_every_block": [r["evaluate_seconds"] for r in runs[False]],
        "search_seconds_kept": [r["seconds"] for r in runs[True]],
        "search_seconds_every_block": [r["seconds"] for r in runs[False]],
        "blocks_skipped_share": skipped / total,
        "identical_errors": identical,
        "best_error": runs[True][0]["best_error"],
    }
    log(
        f"{name}: {off:.1f} s -> {on:.1f} s ({on / off:.2f}x), {skipped / total:.0%} of "
        f"blocks skipped, identical errors: {identical}; per evaluation "
        f"{off / evaluations / forward:.2f} -> {on / evaluations / forward:.2f} dense forwards"
    )
    engine.close()
    return row


if __name__ == "__main__":
    raise SystemExit(main())
