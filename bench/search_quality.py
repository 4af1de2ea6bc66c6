"""Searched pruning against Wanda, OWL+Wanda and SparseGPT on the bundled model (issue 3).

Every method sees the same calibration sample (N x seqlen tokens from the bundled Wikipedia
calibration split, seed 0); held-out perplexity is measured on the evaluation split. The search
scores candidates with the model-wise reconstruction error on the first `--fitness-samples`
of those sequences (statistics from all of them), then the recommended genome and plan are
applied with pruned-prefix statistics, as Wanda does.

    .venv/bin/python bench/search_quality.py --out bench/out/search.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from optishear.config import (
    CalibrationConfig,
    EvaluationConfig,
    PlanConfig,
    PruneConfig,
    SearchConfig,
)
from optishear.core.genome import WANDA_GENOME
from optishear.core.patterns import Pattern
from optishear.data.text import load_texts, sample_calibration, tokenize_stream
from optishear.evaluation.perplexity import perplexity
from optishear.model.hf import load_model
from optishear.recipe.candidates import Candidate
from optishear.recipe.prune import PruneReport, prune_model
from optishear.recipe.shipped import prune_candidate
from optishear.search.engine_spec import engine_for
from optishear.search.evaluator import InProcessEvaluator
from optishear.search.loop import run_search

START = time.perf_counter()


def log(msg: str) -> None:
    print(f"[{time.perf_counter() - START:7.1f}s] {msg}", file=sys.stderr, flush=True)


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--patterns", default="unstructured,2:4,4:8")
    p.add_argument("--sparsity", type=float, default=0.5)
    p.add_argument("--nsamples", type=int, default=32)
    p.add_argument("--seqlen", type=int, default=256)
    p.add_argument("--fitness-samples", type=int, default=8)
    p.add_argument("--objective", choices=("kl", "logits_fro"), default="kl")
    p.add_argument(
        "--engine-stats",
        choices=("dense", "baseline"),
        default="dense",
        help="score masks with dense statistics or with those of Wanda's pruned model",
    )
    p.add_argument("--population", type=int, default=12)
    p.add_argument("--generations", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--eval-windows", type=int, default=32)
    p.add_argument(
        "--low-fidelity",
        type=int,
        default=2,
        help="also rerun the first N:M search with this many screening samples",
    )
    p.add_argument(
        "--baselines",
        default="wanda,owl+wanda,sparsegpt,wanda+refit",
        help="comma-separated baselines to run (wanda+refit needs --refit-top and --wanda-refit)",
    )
    p.add_argument(
        "--skip-baselines",
        action="store_true",
        help="search rows only (baselines with the same settings: bench/quality.py)",
    )
    p.add_argument(
        "--refit-top",
        type=int,
        default=0,
        help="also refit the K best of the front and report the refit recommendation (issue 7)",
    )
    p.add_argument(
        "--rescore-top",
        type=int,
        default=0,
        help="also re-score the K best (and Wanda) pruned as shipped and report that pick",
    )
    p.add_argument(
        "--wanda-refit",
        action="store_true",
        help="with --refit-top, also a Wanda-mask + refit row (about 4 minutes per pattern)",
    )
    p.add_argument("--out", type=Path, default=Path("bench/out/search.json"))
    args = p.parse_args()

    model, tok, _ = load_model("smollm2-135m")
    dense = {k: v.clone() for k, v in model.state_dict().items()}
    calib = sample_calibration(
        tok, CalibrationConfig(n_samples=args.nsamples, seq_len=args.seqlen, seed=args.seed)
    )
    stream = tokenize_stream(tok, load_texts("wiki", "evaluation"))
    ev_cfg = EvaluationConfig(seq_len=512, windows=args.eval_windows)

    def held_out(config: PruneConfig) -> dict[str, Any]:
        return measured(lambda: prune_model(model, calib, config))

    def held_out_candidate(candidate: Candidate, pattern: Pattern, refit: bool) -> dict[str, Any]:
        """The candidate pruned as it ships (optishear.recipe.shipped.prune_candidate), measured."""
        return measured(
            lambda: prune_candidate(
                model, calib, candidate, pattern, update="lstsq" if refit else "none"
            )
        )

    def measured(prune: Callable[[], PruneReport]) -> dict[str, Any]:
        model.load_state_dict(dense)
        report = prune()
        ppl = perplexity(model, stream, ev_cfg)
        model.load_state_dict(dense)
        return {
            "perplexity": ppl.perplexity,
            "achieved": report.achieved,
            "prune_seconds": report.seconds,
            "n_tokens": ppl.n_tokens,
        }

    rows: list[dict[str, Any]] = []

    def search(pattern: Pattern, low: int | None) -> dict[str, Any]:
        model.load_state_dict(dense)
        t0 = time.perf_counter()
        config = SearchConfig(
            model="smollm2-135m",
            sparsity=args.sparsity,
            pattern=pattern,
            population=args.population,
            generations=args.generations,
            seed=args.seed,
            low_fidelity_samples=low,
            refit_top=0 if low else args.refit_top,
            rescore_top=0 if low or args.refit_top else args.rescore_top,
            objective=args.objective,
            fitness_samples=args.fitness_samples,
            engine_stats=args.engine_stats,
        )
        engine = engine_for(model, calib, config)
        setup = time.perf_counter() - t0
        result = run_search(
            InProcessEvaluator(engine),
            config,
            progress=lambda pr: log(
                f"  {pattern} {pr.stage} gen {pr.generation}: best {pr.best_error:.5f}"
            ),
        )
        wall = time.perf_counter() - t0
        # the mask-only recommendation: the front's best member meeting the target
        mask_only = next(s for s in result.front if s.meets_target)
        rec = mask_only.candidate
        out = held_out_candidate(rec, pattern, refit=False)
        baseline = engine.evaluate(Candidate(WANDA_GENOME, (args.sparsity,) * engine.n_blocks))
        del engine
        if result.rescored:
            best = result.recommended
            rows.append(
                {
                    **held_out_candidate(best.candidate, pattern, refit=False),
                    "method": "search, re-scored as shipped",
                    "pattern": str(pattern),
                    "formula": best.candidate.genome.formula(),
                    "genome": best.candidate.genome.to_dict(),
                    "block_sparsity": list(best.candidate.block_sparsity),
                    "finalists": [s.record().model_dump(mode="json") for s in result.finalists],
                    "rescored": [s.record().model_dump(mode="json") for s in result.rescored],
                    "search_seconds": result.seconds,
                    "rescore_step_seconds": sum(s.evaluation.seconds for s in result.rescored),
                    "wall_seconds": wall,
                }
            )
            log(f"  re-scored pick ppl {rows[-1]['perplexity']:.3f} ({rows[-1]['formula']})")
        if result.refitted:
            best = result.recommended
            refit_seconds = sum(s.evaluation.seconds for s in result.refitted)
            rows.append(
                {
                    **held_out_candidate(best.candidate, pattern, refit=True),
                    "method": "search+refit",
                    "pattern": str(pattern),
                    "formula": best.candidate.genome.formula(),
                    "genome": best.candidate.genome.to_dict(),
                    "block_sparsity": list(best.candidate.block_sparsity),
                    "refitted": [s.record().model_dump(mode="json") for s in result.refitted],
                    "search_seconds": result.seconds,
                    "refit_step_seconds": refit_seconds,
                    "wall_seconds": wall,
                }
            )
            log(f"  search+refit ppl {rows[-1]['perplexity']:.3f} ({rows[-1]['formula']})")
            if not pattern.structured and len(set(best.candidate.block_sparsity)) > 1:
                plan_cfg = PruneConfig(
                    method="sparsegpt",
                    sparsity=args.sparsity,
                    pattern=pattern,
                    plan=PlanConfig(kind="explicit", block_sparsity=best.candidate.block_sparsity),
                )
                rows.append(
                    {
                        **held_out(plan_cfg),
                        "method": "sparsegpt+searched plan",
                        "pattern": str(pattern),
                    }
                )
                log(f"  sparsegpt with the searched plan ppl {rows[-1]['perplexity']:.3f}")
        return {
            **out,
            "method": "search" + (f" (low-fi {low})" if low else ""),
            "pattern": str(pattern),
            "formula": rec.genome.formula(),
            "genome": rec.genome.to_dict(),
            "block_sparsity": list(rec.block_sparsity),
            "search_error": result.recommended.evaluation.error,
            "wanda_search_error": baseline.error,
            "evaluations": result.evaluations,
            "cache_hits": result.cache_hits,
            "search_seconds": result.seconds,
            "setup_seconds": setup,
            "wall_seconds": wall,
        }

    for text in args.patterns.split(","):
        pattern = Pattern.parse(text)
        base = [
            ("wanda", PruneConfig(method="wanda", sparsity=args.sparsity, pattern=pattern)),
            ("sparsegpt", PruneConfig(method="sparsegpt", sparsity=args.sparsity, pattern=pattern)),
        ]
        if args.refit_top and args.wanda_refit:
            base.insert(
                1,
                (
                    "wanda+refit",
                    PruneConfig(
                        method="wanda", sparsity=args.sparsity, pattern=pattern, reconstruct=True
                    ),
                ),
            )
        if not pattern.structured:
            owl = PruneConfig(method="wanda", sparsity=args.sparsity, plan=PlanConfig(kind="owl"))
            base.insert(1, ("owl+wanda", owl))
        wanted = set(args.baselines.split(","))
        for name, cfg in [] if args.skip_baselines else [b for b in base if b[0] in wanted]:
            log(f"{name} {pattern} ...")
            rows.append({"method": name, "pattern": str(pattern), **held_out(cfg)})
            log(f"  ppl {rows[-1]['perplexity']:.3f}")
        log(f"search {pattern} ...")
        rows.append(search(pattern, None))
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(rows, indent=2))  # keep what is done if cut short
        log(f"  ppl {rows[-1]['perplexity']:.3f} ({rows[-1]['formula']})")
        if (
            args.low_fidelity
            and pattern.structured
            and not any("low-fi" in r["method"] for r in rows)
        ):
            log(f"search {pattern} with low-fidelity screening ...")
            rows.append(search(pattern, args.low_fidelity))
            log(f"  ppl {rows[-1]['perplexity']:.3f} ({rows[-1]['formula']})")

    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(rows, indent=2))
    print(f"command: {' '.join(sys.argv)}")
    print(f"torch threads: {torch.get_num_threads()}")
    print("| pattern | method | held-out ppl | vs Wanda | vs SparseGPT | prune/search time |")
    print("|---|---|---|---|---|---|")

    def rel(r: dict[str, Any], method: str) -> float:
        base = next(
            (x for x in rows if x["pattern"] == r["pattern"] and x["method"] == method), None
        )
        return r["perplexity"] / base["perplexity"] - 1 if base else float("nan")

    for r in rows:
        secs = r.get("wall_seconds", r["prune_seconds"])
        extra = f" ({r['formula']})" if "formula" in r else ""
        print(
            f"| {r['pattern']} | {r['method']}{extra} | {r['perplexity']:.3f} | "
            f"{rel(r, 'wanda'):+.1%} | {rel(r, 'sparsegpt'):+.1%} | {secs:.0f}s |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
