"""Issue 14: the metric space's ground truth, scored once, resumable, kept in the repository.

Every row-canonical class of the metric space (optishear.core.genome.canonical_genomes) is scored
by the fitness engine at full fidelity on one model, one calibration sample and one pattern
(phase `full`). The best classes are then pruned as shipped (statistics from the pruned
prefix) and measured by held-out perplexity (phase `shipped`), and the same classes are scored
at every screening fidelity (phase `fidelity`), so that the report gives each fidelity's
Spearman correlation with the as-shipped ranking. `report` prints the table and every
search's regret from bench/out/metric_search_*.json (bench/metric_search.py).

Each record is one JSON line appended to --out as soon as it is measured: an interrupted run
is resumed by running the same command again (what is there is skipped), and a file written
with other settings is refused.

  python bench/metric_truth.py --pattern 2:4 --phases full,shipped,fidelity
  python bench/metric_truth.py --pattern 0.5 --classes sample:60 --phases full,shipped,fidelity
  python bench/metric_truth.py --pattern 2:4 --phases report
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

from optishear.config import CalibrationConfig, EvaluationConfig
from optishear.core.genome import WANDA_GENOME, Genome, canonical_genomes
from optishear.core.patterns import Pattern
from optishear.data.text import load_texts, sample_calibration, tokenize_stream
from optishear.evaluation.perplexity import perplexity
from optishear.model.hf import load_model
from optishear.recipe.candidates import Candidate
from optishear.search.fitness import FitnessEngine

_START = time.perf_counter()
FIDELITIES = ((1, 64), (1, 128), (1, 256), (2, 256), (4, 256))  # (sequences, tokens)


def log(msg: str) -> None:
    print(f"[{time.perf_counter() - _START:7.1f}s] {msg}", file=sys.stderr, flush=True)


def parse_pattern(text: str) -> tuple[Pattern, float]:
    if ":" in text:
        p = Pattern.parse(text)
        return p, p.sparsity
    return Pattern(), float(text)


def bench_engine(
    args: argparse.Namespace, pattern: Pattern, target: float, *, second_order: bool
) -> tuple[FitnessEngine, Any, CalibrationConfig]:
    """The issue-14 benchmarks' engine: --model in float32, --nsamples x --seqlen calibration
    (seed 0), Wanda's pruned statistics, fitness on --fitness-samples; with its tokenizer and
    calibration config."""
    torch.manual_seed(0)
    model, tok, _ = load_model(args.model, dtype=torch.float32)
    cal = CalibrationConfig(n_samples=args.nsamples, seq_len=args.seqlen)
    t0 = time.perf_counter()
    engine = FitnessEngine(
        model,
        sample_calibration(tok, cal),
        pattern,
        fitness_samples=args.fitness_samples,
        stats="baseline",
        sparsity=target,
        second_order=second_order,
    )
    log(f"engine built in {time.perf_counter() - t0:.0f} s")
    return engine, tok, cal


def held_out(tok: Any, windows: int) -> tuple[torch.Tensor, EvaluationConfig]:
    """The bundled evaluation split's tokens and the first `windows` 512-token windows."""
    return tokenize_stream(tok, load_texts("wiki", "evaluation")), EvaluationConfig(
        seq_len=512, windows=windows
    )


def default_out(args: argparse.Namespace) -> Path:
    tag = args.pattern.replace(":", "-")
    return Path(f"bench/data/metric_truth_{args.model}_{tag}.jsonl")


def settings(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "model": args.model,
        "pattern": args.pattern,
        "nsamples": args.nsamples,
        "seqlen": args.seqlen,
        "calib_seed": 0,
        "fitness_samples": args.fitness_samples,
        "engine_stats": "baseline",
        "eval_windows": args.eval_windows,
        "eval_seqlen": 512,
        "second_order": args.second_order,
    }


def read_records(path: Path, wanted: dict[str, Any]) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    if lines and lines[0].get("kind") == "settings" and lines[0]["settings"] != wanted:
        raise SystemExit(f"{path} was written with other settings: {lines[0]['settings']}")
    return lines


def spearman(a: list[float], b: list[float]) -> float:
    def ranks(v: list[float]) -> list[float]:
        order = sorted(range(len(v)), key=lambda i: v[i])
        r = [0.0] * len(v)
        for pos, i in enumerate(order):
            r[i] = float(pos)
        return r

    ra, rb = ranks(a), ranks(b)
    n = len(a)
    if n < 3:
        return float("nan")
    ma, mb = statistics.fmean(ra), statistics.fmean(rb)
    cov = sum((x - ma) * (y - mb) for x, y in zip(ra, rb, strict=True))
    va = sum((x - ma) ** 2 for x in ra) ** 0.5
    vb = sum((y - mb) ** 2 for y in rb) ** 0.5
    return cov / (va * vb)


def chosen_classes(args: argparse.Namespace) -> list[Genome]:
    classes = canonical_genomes(second_order=args.second_order)
    if args.classes == "all":
        return classes
    kind, _, count = args.classes.partition(":")
    if kind != "sample":
        raise SystemExit("--classes is 'all' or 'sample:N'")
    rng = random.Random(0)
    picked = rng.sample(classes, min(int(count), len(classes)))
    return sorted({WANDA_GENOME, *picked, *args.extra}, key=lambda g: g.index)


def report(records: list[dict[str, Any]], pattern: str) -> None:
    full = {r["index"]: r for r in records if r["kind"] == "full"}
    shipped = {r["index"]: r for r in records if r["kind"] == "shipped"}
    ranked = sorted(full.values(), key=lambda r: r["error"])
    if not ranked:
        print("no records")
        return
    wanda_rank = next((i + 1 for i, r in enumerate(ranked) if r["index"] == 0), None)
    median = ranked[len(ranked) // 2]
    secs = sum(r["seconds"] for r in full.values())
    print(f"## {pattern}: {len(full)} classes at full fidelity, {secs / 60:.1f} min of evaluations")
    print(f"- best: {ranked[0]['formula']} (error {ranked[0]['error']:.4f})")
    print(f"- median: {median['formula']} (error {median['error']:.4f})")
    print(f"- Wanda: rank {wanda_rank} of {len(ranked)} (error {full[0]['error']:.4f})")
    if shipped:
        by_ppl = sorted(shipped.values(), key=lambda r: r["perplexity"])
        wanda_ppl = shipped.get(0, {}).get("perplexity")
        print("\n| rank by ppl | genome | engine error | shipped error | held-out ppl | vs Wanda |")
        print("|---|---|---|---|---|---|")
        for i, r in enumerate(by_ppl, 1):
            gain = f"{100 * (r['perplexity'] / wanda_ppl - 1):+.1f}%" if wanda_ppl else ""
            print(
                f"| {i} | `{r['formula']}` | {full[r['index']]['error']:.4f} | "
                f"{r['shipped_error']:.4f} | {r['perplexity']:.3f} | {gain} |"
            )
        ids = [i for i in shipped if i in full]
        truth = [shipped[i]["shipped_error"] for i in ids]
        ppl = [shipped[i]["perplexity"] for i in ids]
        print(f"\nSpearman over the {len(ids)} shipped classes, against the as-shipped error:")
        print(f"- held-out perplexity: {spearman(ppl, truth):.3f}")
        print(f"- full fidelity: {spearman([full[i]['error'] for i in ids], truth):.3f}")
        fid = [r for r in records if r["kind"] == "fidelity"]
        for n, t in FIDELITIES:
            got = {r["index"]: r["error"] for r in fid if r["samples"] == n and r["tokens"] == t}
            common = [i for i in ids if i in got]
            if len(common) >= 3:
                rho = spearman(
                    [got[i] for i in common], [shipped[i]["shipped_error"] for i in common]
                )
                print(f"- {n} x {t} tokens: {rho:.3f} ({len(common)} classes)")


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--pattern", default="2:4", help="2:4, 4:8 or an unstructured target (0.5)")
    p.add_argument("--nsamples", type=int, default=32)
    p.add_argument("--seqlen", type=int, default=256)
    p.add_argument("--fitness-samples", type=int, default=8)
    p.add_argument("--eval-windows", type=int, default=16)
    p.add_argument("--second-order", action="store_true", help="the extended space's classes")
    p.add_argument("--classes", default="all", help="all, or sample:N (plus Wanda and --extra)")
    p.add_argument("--extra", type=Genome.parse, nargs="*", default=[], help="genomes to add")
    p.add_argument("--top", type=int, default=20, help="classes pruned as shipped")
    p.add_argument("--phases", default="full,shipped,fidelity,report")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args()
    out = args.out or default_out(args)
    wanted = settings(args)
    records = read_records(out, wanted)
    phases = args.phases.split(",")
    if phases == ["report"]:
        report(records, args.pattern)
        return 0
    out.parent.mkdir(parents=True, exist_ok=True)

    def add(record: dict[str, Any]) -> None:
        records.append(record)
        with out.open("a") as f:
            f.write(json.dumps(record) + "\n")

    if not records:
        add({"kind": "settings", "settings": wanted})
    pattern, target = parse_pattern(args.pattern)
    engine, tok, _ = bench_engine(args, pattern, target, second_order=True)
    uniform = (target,) * engine.n_blocks

    if "full" in phases:
        done = {r["index"] for r in records if r["kind"] == "full"}
        todo = [g for g in chosen_classes(args) if g.index not in done]
        log(f"full fidelity: {len(done)} done, {len(todo)} to go")
        for i, g in enumerate(todo):
            e = engine.evaluate(Candidate(g, uniform))
            engine.clear_mask_cache()
            add({"kind": "full", "index": g.index, "formula": g.formula(), "error": e.error,
                 "seconds": e.seconds})  # fmt: skip
            if i % 10 == 0:
                log(f"{i + 1}/{len(todo)}: {g.formula()} {e.error:.4f} ({e.seconds:.1f} s)")

    full = sorted((r for r in records if r["kind"] == "full"), key=lambda r: r["error"])
    top = [r["index"] for r in full[: args.top]]
    if 0 not in top and any(r["index"] == 0 for r in full):
        top.append(0)  # Wanda always, for the relative gains
    if "shipped" in phases:
        stream, ev = held_out(tok, args.eval_windows)
        done = {r["index"] for r in records if r["kind"] == "shipped"}
        for index in [i for i in top if i not in done]:
            g = Genome.from_index(index)
            c = Candidate(g, uniform)
            e = engine.evaluate(c, shipped=True)
            engine.apply_shipped(c)
            ppl = perplexity(engine.model, stream, ev)
            engine.restore()
            add({"kind": "shipped", "index": index, "formula": g.formula(),
                 "shipped_error": e.error, "perplexity": ppl.perplexity,
                 "achieved": e.sparsity})  # fmt: skip
            log(f"shipped {g.formula()}: error {e.error:.4f}, ppl {ppl.perplexity:.3f}")

    if "fidelity" in phases:
        shipped_ids = [r["index"] for r in records if r["kind"] == "shipped"]
        done = {(r["index"], r["samples"], r["tokens"]) for r in records if r["kind"] == "fidelity"}
        for index in shipped_ids:
            c = Candidate(Genome.from_index(index), uniform)
            for n, t in FIDELITIES:
                if (index, n, t) in done:
                    continue
                e = engine.evaluate(c, n, n_tokens=t)
                add({"kind": "fidelity", "index": index, "samples": n, "tokens": t,
                     "error": e.error, "seconds": e.seconds})  # fmt: skip
            engine.clear_mask_cache()
        log("fidelities done")
    if "report" in phases:
        report(records, args.pattern)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
