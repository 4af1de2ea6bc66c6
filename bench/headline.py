"""The headline comparison, repeated over calibration seeds: searched model, Wanda, SparseGPT.

Per pattern, one `optishear search --baselines` on the first calibration seed (`--seed-genomes`
may seed its metric search, as `--metric-from` does; none by default, and never genomes ranked
on the held-out text; the opening screen is off to fit the session's time): the search, then the held-out perplexity of its
recommended model (pruned as shipped) beside Wanda's and SparseGPT's, all three pruned from
the same dense weights with the same calibration sample and scored on the same windows. For
every other seed, that recommended candidate (genome and plan) is pruned as shipped from that
seed's calibration sample, beside Wanda and SparseGPT on the same sample, by the same
function the search uses (optishear.recipe.comparison.compare_held_out). The table gives each
method's mean and spread over the seeds, and the searched model's gain, called a tie when it
is smaller than the spread of the gains themselves.

Run from the repository root:
  python bench/headline.py --seeds 0,1,2 --patterns unstructured,2:4 --out bench/out/headline
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

METHODS = ("searched", "wanda", "sparsegpt")


def search_argv(args: argparse.Namespace, pattern: str, seed: int, out: Path) -> list[str]:
    return [
        sys.executable, "-m", "optishear", "--no-progress", "search",
        "--model", args.model, "--pattern", pattern,
        "--calib-seed", str(seed), "--nsamples", str(args.nsamples), "--seqlen", str(args.seqlen),
        "--eval-windows", str(args.eval_windows), "--eval-seqlen", str(args.eval_seqlen),
        "--population", str(args.population), "--generations", str(args.generations),
        "--metric-space", args.metric_space, "--screen-rungs", args.screen_rungs,
        "--screen-keep", str(args.screen_keep), "--fitness-samples", str(args.fitness_samples),
        *(["--seed-genomes", args.seed_genomes] if args.seed_genomes else []),
        "--refit-top", str(args.refit_top), "--baselines", "--no-eval", "--out", str(out),
    ]  # fmt: skip


def searched(args: argparse.Namespace, pattern: str, seed: int) -> dict[str, Any]:
    """The search's own run on `seed` (kept once finished: the bench resumes)."""
    out = args.out / f"{pattern.replace(':', '-')}-seed{seed}"
    report = out / "search.json"
    if not report.exists():
        argv = search_argv(args, pattern, seed, out)
        print(f"$ {shlex.join(argv[1:])}", file=sys.stderr, flush=True)
        start = time.perf_counter()
        subprocess.run(argv, check=True)
        print(f"  {time.perf_counter() - start:.0f} s", file=sys.stderr, flush=True)
    data = json.loads(report.read_text())
    return {
        "pattern": pattern,
        "seed": seed,
        "held_out": data["summary"]["held_out"],
        "recommended": data["recommended"],
        "shipped": data["summary"].get("shipped"),
        "config": data["config"],
        "search_seconds": data["summary"]["search_seconds"],
    }


def repruned(first: dict[str, Any], seed: int, out: Path) -> dict[str, Any]:
    """The first seed's recommended candidate, Wanda and SparseGPT from `seed`'s calibration."""
    if out.exists():
        return json.loads(out.read_text())
    import torch

    from optishear.config import PruneConfig, SearchConfig
    from optishear.data.text import sample_calibration
    from optishear.model.blocks import block_param_counts, iter_linears
    from optishear.model.hf import load_model
    from optishear.recipe.candidates import ScoredCandidate
    from optishear.recipe.comparison import compare_held_out, held_out_ids
    from optishear.recipe.shipped import shipped_config

    base = SearchConfig.model_validate(first["config"])
    calibration = base.calibration.model_copy(update={"seed": seed})
    config = base.model_copy(update={"calibration": calibration})
    model, tokenizer, _ = load_model(config.model)
    calib = sample_calibration(tokenizer, config.calibration)
    eval_ids = held_out_ids(tokenizer, config.evaluation)
    weights = [lin.weight for _, _, lin in iter_linears(model)]
    candidate = ScoredCandidate.model_validate(first["recommended"]).candidate()
    print(f"  seed {seed}: {candidate.label()} re-pruned", file=sys.stderr, flush=True)
    shipped = first.get("shipped")  # the first seed's recipe (optishear.search.finish)
    if shipped is not None:
        recipe = PruneConfig.model_validate(shipped)
    else:
        recipe = shipped_config(
            candidate,
            config.pattern,
            block_param_counts(model),
            update=config.shipped_update(),
            batch_size=config.batch_size,
            layer_numel=[lin.weight.numel() for _, _, lin in iter_linears(model)],
        )
    with torch.no_grad():
        held = compare_held_out(model, weights, calib, eval_ids, recipe, config)
    result = {
        "pattern": first["pattern"],
        "seed": seed,
        "held_out": held.model_dump(mode="json"),
        "recommended": first["recommended"],
        "config": config.model_dump(mode="json"),
        "search_seconds": 0.0,
    }
    out.write_text(json.dumps(result, indent=2))
    return result


def run_pattern(args: argparse.Namespace, pattern: str, seeds: list[int]) -> list[dict[str, Any]]:
    first = searched(args, pattern, seeds[0])
    rest = [
        repruned(first, s, args.out / f"{pattern.replace(':', '-')}-seed{s}-repruned.json")
        for s in seeds[1:]
    ]
    out = []
    for run in (first, *rest):
        held_out = run["held_out"]
        out.append(
            {
                "pattern": pattern,
                "seed": run["seed"],
                "ppl": {r["name"]: r["perplexity"] for r in held_out["rows"]},
                "gains": held_out["gains"],
                "protocol": held_out["protocol"],
                "recommended": run["recommended"]["genome"]["formula"],
                "search_seconds": run["search_seconds"],
                "compare_seconds": held_out["seconds"],
            }
        )
    return out


def spread(values: list[float]) -> float:
    return statistics.stdev(values) if len(values) > 1 else 0.0


def table(runs: list[dict[str, Any]], patterns: list[str]) -> str:
    lines = [
        "| pattern | dense | searched | Wanda | SparseGPT | searched vs Wanda | vs SparseGPT |",
        "|---|---|---|---|---|---|---|",
    ]
    for pattern in patterns:
        rows = [r for r in runs if r["pattern"] == pattern]
        cells = []
        for name in ("dense", *METHODS):
            vals = [r["ppl"][name] for r in rows]
            cells.append(f"{statistics.mean(vals):.3f} ± {spread(vals):.3f}")
        for base in ("wanda", "sparsegpt"):
            gains = [r["gains"][base] for r in rows]
            mean, sd = statistics.mean(gains), spread(gains)
            verdict = "tie" if abs(mean) <= sd else ("better" if mean < 0 else "worse")
            cells.append(f"{mean * 100:+.1f}% ± {sd * 100:.1f} ({verdict})")
        lines.append(f"| {pattern} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--patterns", default="unstructured,2:4")
    p.add_argument("--nsamples", type=int, default=32)
    p.add_argument("--seqlen", type=int, default=128)
    p.add_argument("--eval-windows", type=int, default=16)
    p.add_argument("--eval-seqlen", type=int, default=512)
    p.add_argument("--population", type=int, default=4)
    p.add_argument("--generations", type=int, default=2)
    p.add_argument("--metric-space", default="second_order")
    p.add_argument("--screen-rungs", default="off")
    p.add_argument("--screen-keep", type=float, default=0.05)
    p.add_argument("--fitness-samples", type=int, default=4)
    p.add_argument("--refit-top", type=int, default=1)
    # No seed genomes by default: the ones given before were ranked by held-out perplexity on
    # the very windows this headline reports, and the held-out text chooses nothing (issue 26).
    p.add_argument("--seed-genomes", default="")
    p.add_argument("--out", type=Path, default=Path("bench/out/headline"))
    args = p.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    patterns = args.patterns.split(",")
    runs = [run for pattern in patterns for run in run_pattern(args, pattern, seeds)]
    (args.out / "headline.json").write_text(json.dumps(runs, indent=2))
    print(f"`python bench/headline.py {shlex.join(sys.argv[1:])}`\n")
    print(table(runs, patterns))
    print()
    for r in runs:
        print(
            f"- {r['pattern']} seed {r['seed']}: "
            + ", ".join(f"{k} {v:.3f}" for k, v in r["ppl"].items())
            + (f"; search {r['search_seconds']:.0f} s" if r["search_seconds"] else "; re-pruned")
            + f", comparison {r['compare_seconds']:.0f} s"
        )
    proto = runs[0]["protocol"]
    print(
        f"\nProtocol: calibration {proto['calibration_samples']} x {proto['calibration_seq_len']} "
        f"tokens of {proto['calibration_source']!r} (seeds {args.seeds}); held-out "
        f"{proto['eval_windows']} windows x {proto['eval_seq_len']} tokens of "
        f"{proto['eval_text']!r} ({proto['eval_tokens']} predicted tokens)."
    )


if __name__ == "__main__":
    main()
