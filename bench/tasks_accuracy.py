"""Downstream accuracy of pruned models: dense, Wanda, SparseGPT and searched candidates.

Each row prunes the same dense weights with the same calibration sample, then runs lm-eval
tasks (default: the offline optishear_text tasks and optishear_cloze, tests/data/lm_eval_tasks) and the
held-out perplexity on that model, and prints a Markdown table. A searched candidate is a
ScoredCandidate JSON: `recommended.json` of `optishear search --out DIR`, or a member of
GET /api/searches/{id}/front.
A searched model exported as shipped (`optishear search --export`) is measured as loaded:
`--model OUT/checkpoint --methods dense --label NAME`.
Run from the repository root:
    python bench/tasks_accuracy.py --candidate runs/s50/recommended.json --out bench/out/tasks.json
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

from torch import nn

from optishear.config import CalibrationConfig, EvaluationConfig, PruneConfig
from optishear.core.patterns import Pattern
from optishear.data.text import evaluation_stream, sample_calibration
from optishear.evaluation.perplexity import perplexity
from optishear.evaluation.tasks import (
    LoadedTasks,
    TaskConfig,
    TaskReport,
    load_tasks,
    run_loaded_tasks,
)
from optishear.evaluation.text_tasks import TextTaskSpec
from optishear.model.blocks import iter_linears
from optishear.model.hf import load_model
from optishear.recipe.candidates import ScoredCandidate
from optishear.recipe.prune import prune_model
from optishear.recipe.shipped import prune_candidate

ROOT = Path(__file__).resolve().parents[1]
LOCAL_TASKS = ROOT / "tests" / "data" / "lm_eval_tasks"
_START = time.perf_counter()


def log(msg: str) -> None:
    print(f"[{time.perf_counter() - _START:7.1f}s] {msg}", file=sys.stderr, flush=True)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument(
        "--methods",
        default="dense,wanda,sparsegpt",
        help="comma-separated: dense and library methods (magnitude, wanda, ria, sparsegpt); "
        "METHOD+refit ships the method's mask with the least-squares refit",
    )
    p.add_argument(
        "--candidate",
        type=Path,
        action="append",
        default=[],
        help="a searched candidate (ScoredCandidate JSON); repeatable",
    )
    p.add_argument("--refit", action="store_true", help="ship candidates with the refit")
    p.add_argument(
        "--refit-holdout",
        type=int,
        default=0,
        help="every refit (METHOD+refit rows, --refit candidates) holds every Nth calibration "
        "sequence aside to choose each layer's damping (0: the fixed damping)",
    )
    p.add_argument(
        "--label",
        default="dense",
        help="the name of the row of the model as loaded (method 'dense'), e.g. for a searched "
        "checkpoint exported by `optishear search --export`",
    )
    p.add_argument("--sparsity", type=float, default=0.5, help="target of the method rows")
    p.add_argument("--pattern", default="unstructured", help="unstructured, 2:4, 4:8")
    p.add_argument("--nsamples", type=int, default=32, help="calibration sequences")
    p.add_argument("--seqlen", type=int, default=256, help="calibration sequence length")
    p.add_argument("--seed", type=int, default=0, help="calibration sampling seed")
    p.add_argument(
        "--tasks", default="optishear_text,optishear_cloze", help="comma-separated lm-eval tasks"
    )
    p.add_argument("--task-items", type=int, default=500, help="items per optishear_text task")
    p.add_argument(
        "--task-path",
        type=Path,
        help=f"local task folder (default: {LOCAL_TASKS.relative_to(ROOT)} for optishear_cloze)",
    )
    p.add_argument("--task-limit", type=int, help="first N examples of each task")
    p.add_argument("--num-fewshot", type=int, default=0)
    p.add_argument("--task-batch-size", type=int, default=16)
    p.add_argument(
        "--eval-windows", type=int, default=16, help="held-out 512-token windows (0: none)"
    )
    p.add_argument("--out", type=Path, help="also write the rows as JSON here")
    return p.parse_args()


def zero_fraction(model: nn.Module) -> float:
    """Share of exactly-zero weights among the decoder blocks' linears, measured directly."""
    zeros = total = 0
    for _, _, lin in iter_linears(model):
        zeros += int((lin.weight == 0).sum())
        total += lin.weight.numel()
    return zeros / total


def main() -> int:
    args = parse_args()
    # lm-eval warns, for its own CLI's users, that a model object is passed in: by design here.
    logging.getLogger("lm_eval").setLevel(logging.ERROR)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    pattern = Pattern.parse(args.pattern)
    # Every config and candidate is read before the model loads: a typo fails in seconds.
    configs = {
        m: PruneConfig(
            method=m.removesuffix("+refit"),
            sparsity=args.sparsity,
            pattern=pattern,
            reconstruct=m.endswith("+refit"),
            refit_holdout=args.refit_holdout if m.endswith("+refit") else 0,
        )
        for m in methods
        if m != "dense"
    }
    candidates = {
        path: ScoredCandidate.model_validate_json(path.read_text()) for path in args.candidate
    }
    names = tuple(t.strip() for t in args.tasks.split(",") if t.strip())
    if args.task_path is None and "optishear_cloze" in names:
        args.task_path = LOCAL_TASKS
    tasks = load_tasks(
        TaskConfig(
            names,
            num_fewshot=args.num_fewshot,
            limit=args.task_limit,
            batch_size=args.task_batch_size,
            include_path=args.task_path,
            text=TextTaskSpec(items=args.task_items),
        )
    )
    model, tokenizer, _ = load_model(args.model)
    calib = sample_calibration(
        tokenizer,
        CalibrationConfig(
            source="wiki", n_samples=args.nsamples, seq_len=args.seqlen, seed=args.seed
        ),
    )
    eval_cfg = EvaluationConfig(windows=max(args.eval_windows, 1))
    stream = evaluation_stream(tokenizer, eval_cfg) if args.eval_windows else None
    dense = {k: v.detach().clone() for k, v in model.state_dict().items()}
    log(f"loaded {args.model}; calibration {tuple(calib.shape)}; tasks {tasks.config.tasks}")

    rows: list[dict[str, Any]] = []

    def measure(label: str, prune_seconds: float) -> None:
        row = score(model, tokenizer, tasks, stream, eval_cfg)
        row.update(method=label, achieved=zero_fraction(model), prune_seconds=prune_seconds)
        rows.append(row)
        log(f"{label}: {row['accuracy']} ppl {row['ppl']} ({row['task_seconds']:.0f}s tasks)")
        write(args, rows)  # after every row: a stopped run keeps what it measured

    for method in methods:
        model.load_state_dict(dense)
        if method == "dense":
            measure(args.label, 0.0)
            continue
        report = prune_model(model, calib, configs[method])
        held = configs[method].refit_holdout
        aside = f", damping chosen on 1/{held}" if held else ""
        measure(f"{method} {report.target:g} {report.pattern}{aside}", report.seconds)
    for path, scored in candidates.items():
        model.load_state_dict(dense)
        report = prune_candidate(
            model,
            calib,
            scored.candidate(),
            pattern,
            update="lstsq" if args.refit else "none",
            refit_holdout=args.refit_holdout if args.refit else 0,
        )
        measure(f"searched {scored.key} ({path.name})", report.seconds)

    print(f"model {args.model}; calibration {args.nsamples}x{args.seqlen}, seed {args.seed}")
    print(markdown(rows))
    write(args, rows)
    return 0


def write(args: argparse.Namespace, rows: list[dict[str, Any]]) -> None:
    if not args.out:
        return
    args.out.parent.mkdir(parents=True, exist_ok=True)
    protocol = {
        "command": " ".join(["python", *sys.argv]),
        "model": args.model,
        "calibration": [args.nsamples, args.seqlen, args.seed],
        "pattern": args.pattern,
        "sparsity": args.sparsity,
        "eval_windows": args.eval_windows,
        "refit_holdout": args.refit_holdout,
        "seconds": round(time.perf_counter() - _START, 1),
    }
    args.out.write_text(json.dumps({"protocol": protocol, "rows": rows}, indent=2))


def score(
    model: nn.Module,
    tokenizer: Any,
    tasks: LoadedTasks,
    stream: Any,
    eval_cfg: EvaluationConfig,
) -> dict[str, Any]:
    report: TaskReport = run_loaded_tasks(model, tokenizer, tasks)
    ppl = None if stream is None else perplexity(model, stream, eval_cfg)
    return {
        "accuracy": {f"{s.task} {s.metric}": s.value for s in report.scores},
        "stderr": {f"{s.task} {s.metric}": s.stderr for s in report.scores},
        "n_samples": {s.task: s.n_samples for s in report.scores},
        "tasks": report.to_dict(),
        "task_seconds": report.seconds,
        "ppl": None if ppl is None else round(ppl.perplexity, 3),
        "eval_tokens": None if ppl is None else ppl.n_tokens,
    }


def markdown(rows: list[dict[str, Any]]) -> str:
    metrics = list(rows[0]["accuracy"]) if rows else []
    head = ["method", "sparsity", *metrics, "ppl", "prune s", "tasks s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["method"], f"{r['achieved']:.4f}"]
        for m in metrics:
            err = r["stderr"].get(m)
            cells.append(f"{r['accuracy'][m]:.4f}" + ("" if err is None else f" ± {err:.4f}"))
        cells += [
            "-" if r["ppl"] is None else f"{r['ppl']:.3f}",
            f"{r['prune_seconds']:.1f}",
            f"{r['task_seconds']:.1f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
