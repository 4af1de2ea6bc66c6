"""Issue 13: per-layer allocation against the baselines and the per-block search, side by side.

For each target, on one model with one calibration sample, every row prunes the same dense
weights and is measured on the same held-out windows:
- baselines: Wanda, OWL+Wanda, SparseGPT, OWL+SparseGPT, uniform Wanda masks + our refit;
- today: the per-block NSGA-III search (Wanda's metric), shipped mask-only and refit;
- new: the per-layer allocation, mask-only (mask database) and refit-aware (refit database),
  shipped mask-only and refit respectively.
Searches get the same evaluation budget (full-evaluation equivalents) and choose on
calibration data alone. A target "2:4@0.45" is 2:4 with dense exceptions at 45% overall.

Run from the repository root, e.g.:
  python bench/allocation.py --model smollm2-135m --targets 0.5,0.6,0.7,2:4@0.45 \
      --out bench/out/allocation_smollm2.json
"""

from __future__ import annotations

import argparse
import json
import logging
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
from optishear.model.blocks import iter_linears
from optishear.model.hf import load_model
from optishear.recipe.candidates import Candidate
from optishear.recipe.prune import PruneReport, prune_model
from optishear.recipe.shipped import prune_candidate
from optishear.search.engine_spec import engine_for
from optishear.search.evaluator import InProcessEvaluator
from optishear.search.loop import run_search

_START = time.perf_counter()


def log(msg: str) -> None:
    print(f"[{time.perf_counter() - _START:7.1f}s] {msg}", file=sys.stderr, flush=True)


def parse_target(text: str) -> tuple[Pattern, float]:
    if "@" in text:
        pattern, sparsity = text.split("@")
        return Pattern.parse(pattern), float(sparsity)
    if ":" in text:
        p = Pattern.parse(text)
        return p, p.sparsity
    return Pattern(), float(text)


def main() -> int:
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("optishear").setLevel(logging.INFO)
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--targets", default="0.5,0.6,0.7,2:4@0.45")
    p.add_argument("--nsamples", type=int, default=32)
    p.add_argument("--seqlen", type=int, default=256)
    p.add_argument("--fitness-samples", type=int, default=8)
    p.add_argument("--screen", default="2", help="screening steps (sequences), '' for none")
    p.add_argument("--budget", type=float, default=120, help="full-evaluation equivalents")
    p.add_argument("--population", type=int, default=16)
    p.add_argument("--promote", type=float, default=0.25)
    p.add_argument(
        "--mask-ships",
        type=lambda t: [x == "refit" for x in t.split(",") if x != "none"],
        default=[False],
        help="how the mask-database search ships: masks, refit, masks,refit or none",
    )
    p.add_argument("--selection", default="one_plus_lambda")
    p.add_argument("--engine-stats", default="baseline", choices=("baseline", "dense"))
    p.add_argument("--eval-windows", type=int, default=32)
    p.add_argument("--rows", default="baselines,block,layer,layer+refit")
    p.add_argument("--baselines", default="wanda,owl+wanda,sparsegpt,owl+sparsegpt,uniform+refit")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--out", type=Path, default=Path("bench/out/allocation.json"))
    args = p.parse_args()
    rows_wanted = set(args.rows.split(","))
    base_wanted = [b for b in args.baselines.split(",") if b and b != "none"]

    dtype = getattr(torch, args.dtype)
    model, tok, _ = load_model(args.model, dtype=dtype)
    dense = {k: v.clone() for k, v in model.state_dict().items()}
    cal_cfg = CalibrationConfig(n_samples=args.nsamples, seq_len=args.seqlen, seed=0)
    calib = sample_calibration(tok, cal_cfg)
    stream = tokenize_stream(tok, load_texts("wiki", "evaluation"))
    ev_cfg = EvaluationConfig(seq_len=512, windows=args.eval_windows)
    numel = [lin.weight.numel() for _, _, lin in iter_linears(model)]
    out: dict[str, Any] = {"args": vars(args) | {"out": str(args.out)}, "rows": []}
    args.out.parent.mkdir(parents=True, exist_ok=True)

    def save() -> None:
        args.out.write_text(json.dumps(out, indent=2, default=str))

    t0 = time.perf_counter()
    dense_ppl = perplexity(model, stream, ev_cfg)
    out["dense"] = {"perplexity": dense_ppl.perplexity, "seconds": time.perf_counter() - t0}
    log(f"dense perplexity {dense_ppl.perplexity:.3f}")
    # one dense forward over the fitness sequences: what a candidate costs at best
    with torch.no_grad():
        t0 = time.perf_counter()
        for i in range(0, args.fitness_samples, 8):
            model(calib[i : i + 8])
        out["dense_forward_seconds"] = time.perf_counter() - t0

    def measured(prune: Callable[[], PruneReport]) -> dict[str, Any]:
        model.load_state_dict(dense)
        report = prune()
        ppl = perplexity(model, stream, ev_cfg)
        model.load_state_dict(dense)
        return {
            "perplexity": ppl.perplexity,
            "achieved": report.achieved,
            "prune_seconds": report.seconds,
        }

    def row(target: str, name: str, data: dict[str, Any]) -> None:
        data = {"target": target, "row": name, **data}
        out["rows"].append(data)
        save()
        log(
            f"{target} {name}: ppl {data['perplexity']:.3f} at {data['achieved']:.4f}"
            + (f", search {data['search_seconds']:.0f} s" if "search_seconds" in data else "")
        )

    for text in args.targets.split(","):
        pattern, target = parse_target(text)
        dense_exc = pattern.structured and target < pattern.sparsity - 1e-9
        if "baselines" in rows_wanted and dense_exc:
            # the usual hand-made exception: the first layers dense until the budget is used
            first = []
            pruned = sum(numel) * pattern.sparsity
            for n in numel:
                keep = (pruned - n * pattern.sparsity) / sum(numel) >= target - 1e-12
                first.append(0.0 if keep else pattern.sparsity)
                pruned -= n * pattern.sparsity if keep else 0
                if not keep:
                    break
            first += [pattern.sparsity] * (len(numel) - len(first))
            for method in ("wanda", "sparsegpt"):
                cfg = PruneConfig(
                    method=method,
                    pattern=pattern,
                    plan=PlanConfig(kind="explicit", linear_sparsity=tuple(first)),
                )
                row(
                    text,
                    f"{method}, first layers dense",
                    measured(lambda cfg=cfg: prune_model(model, calib, cfg)),
                )
        if "baselines" in rows_wanted:
            for b in base_wanted:
                method = "sparsegpt" if "sparsegpt" in b else "wanda"
                plan = PlanConfig(kind="owl") if b.startswith("owl") else PlanConfig()
                if pattern.structured and plan.kind == "owl":
                    continue  # N:M keeps every block at N/M
                cfg = PruneConfig(
                    method=method,
                    sparsity=pattern.sparsity if pattern.structured else target,
                    pattern=pattern,
                    plan=plan,
                    reconstruct=b == "uniform+refit",
                )
                row(text, b, measured(lambda cfg=cfg: prune_model(model, calib, cfg)))

        def search(
            name: str,
            config: SearchConfig,
            ships: tuple[bool, ...],
            pattern: Pattern = pattern,
            text: str = text,
        ) -> None:
            """Run the search once; ship its recommendation with masks only and/or refit."""
            model.load_state_dict(dense)
            t0 = time.perf_counter()
            engine = engine_for(model, calib, config, folder=args.out.parent)
            setup = time.perf_counter() - t0
            info = engine.database_info()
            # one forward of the dense model over the fitness sequences, as the engine runs it
            # (to the lm_head inputs): what a candidate cannot cost less than
            engine.restore()
            f0 = time.perf_counter()
            engine._final_hidden(engine.n_fitness)
            forward = time.perf_counter() - f0
            result = run_search(
                InProcessEvaluator(engine),
                config,
                progress=lambda p: log(
                    f"  {name} gen {p.generation}: best {p.best_error:.5f}, "
                    f"{p.evaluations} evaluations"
                ),
            )
            seconds = time.perf_counter() - t0
            full = [
                e.seconds
                for e in (s.evaluation for s in result.stages[-1].population)
                if e.n_samples == config.full_samples()
            ]
            engine.close()
            del engine
            cand: Candidate = result.recommended.candidate
            info_row = {
                "search_seconds": seconds,
                "setup_seconds": setup,
                "database": info.describe() if info else None,
                "database_bytes": info.bytes if info else 0,
                "database_seconds": info.seconds if info else 0.0,
                "evaluations": result.evaluations,
                "cost": sum(h.get("cost", 0.0) for h in result.history),
                "generations": len(result.history),
                "engine_error": result.recommended.evaluation.error,
                "start_error": min((h["best_error"] for h in result.history[:1]), default=None),
                "candidate_seconds": sum(full) / len(full) if full else None,
                "engine_forward_seconds": forward,
                "candidate": result.recommended.record().model_dump(mode="json"),
                "baselines": [b.record().model_dump(mode="json") for b in result.baselines],
            }
            if not ships:  # the search alone: its engine error and cost
                achieved = result.recommended.evaluation.sparsity
                row(text, name, info_row | {"perplexity": float("nan"), "achieved": achieved})
            for refit_ship in ships:
                data = measured(
                    lambda r=refit_ship: prune_candidate(
                        model, calib, cand, pattern, update="lstsq" if r else "none"
                    )
                )
                shipped = "refit" if refit_ship else "masks"
                row(text, f"{name}, shipped {shipped}", data | info_row)

        common = {
            "model": args.model,
            "sparsity": target,
            "pattern": str(pattern),
            "population": args.population,
            "generations": 1000,
            "fitness_samples": args.fitness_samples,
            "engine_stats": args.engine_stats,
            "max_evaluations": args.budget,
            "promote_fraction": args.promote,
            "calibration": cal_cfg.model_dump(),
            "dtype": args.dtype,
        }
        screen = [int(x) for x in args.screen.split(",") if x]
        if screen:
            common["low_fidelity_samples"] = screen
        if "block" in rows_wanted and not pattern.structured:
            block = SearchConfig(**common, stages="layerwise", genome=WANDA_GENOME)
            search("block search", block, (False, True))
        for kind in ("layer", "layer+refit"):
            if kind not in rows_wanted:
                continue
            refit = kind == "layer+refit"
            cfg = SearchConfig(
                **common,
                stages="allocation",
                allocation={"refit": refit, "selection": args.selection},
            )
            name = "layer search, refit db" if refit else "layer search, mask db"
            if args.selection != "one_plus_lambda" or not screen:
                name += f" ({args.selection}, screening {args.screen or 'off'})"
            search(name, cfg, (True,) if refit else tuple(args.mask_ships))
    log("done")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
