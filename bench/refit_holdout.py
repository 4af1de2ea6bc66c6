"""The refit's damping: fixed (0.01) against chosen per layer on held-aside calibration sequences.

For each calibration size, the same dense weights are pruned twice with Wanda's mask and the
least-squares refit from the same calibration sample: once with the fixed damping, fitting
every sequence; once with `--refit-holdout N`, fitting all but every Nth sequence and choosing
each layer's damping by its output error on those. Each is scored on the same held-out
windows; SparseGPT on the same sample is the reference. Writes one JSON.

    python bench/refit_holdout.py --sizes 32x128,64x512 --pattern 2:4 \\
        --out bench/results/refit_holdout_smollm2-135m_2-4.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import torch

from optishear.config import CalibrationConfig, EvaluationConfig, PruneConfig
from optishear.core.patterns import Pattern
from optishear.data.text import evaluation_stream, sample_calibration
from optishear.evaluation.perplexity import perplexity
from optishear.model.hf import load_model
from optishear.recipe.prune import prune_model

_START = time.perf_counter()


def log(msg: str) -> None:
    print(f"[{time.perf_counter() - _START:7.1f}s] {msg}", file=sys.stderr, flush=True)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--sizes", default="32x128,64x512", help="calibration NxT, comma-separated")
    p.add_argument("--pattern", default="2:4")
    p.add_argument("--sparsity", type=float, default=0.5)
    p.add_argument("--holdout", type=int, default=8, help="every Nth sequence held aside")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--eval-windows", type=int, default=16)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()
    torch.set_grad_enabled(False)
    pattern = Pattern.parse(args.pattern)
    model, tokenizer, _ = load_model(args.model)
    dense = {k: v.detach().clone() for k, v in model.state_dict().items()}
    eval_cfg = EvaluationConfig(windows=args.eval_windows)
    stream = evaluation_stream(tokenizer, eval_cfg)
    recipes = {
        "SparseGPT": PruneConfig(method="sparsegpt", sparsity=args.sparsity, pattern=pattern),
        "Wanda+refit, damping 0.01": PruneConfig(
            method="wanda", sparsity=args.sparsity, pattern=pattern, reconstruct=True
        ),
        f"Wanda+refit, damping chosen on 1/{args.holdout}": PruneConfig(
            method="wanda",
            sparsity=args.sparsity,
            pattern=pattern,
            reconstruct=True,
            refit_holdout=args.holdout,
        ),
    }
    rows: list[dict[str, Any]] = []
    for size in args.sizes.split(","):
        n, t = (int(v) for v in size.split("x"))
        calib = sample_calibration(
            tokenizer, CalibrationConfig(n_samples=n, seq_len=t, seed=args.seed)
        )
        for name, recipe in recipes.items():
            model.load_state_dict(dense)
            report = prune_model(model, calib, recipe)
            ppl = perplexity(model, stream, eval_cfg).perplexity
            dampings = Counter(r.refit_damping for r in report.layers if r.refit_damping)
            rows.append(
                {
                    "calibration": [n, t],
                    "recipe": name,
                    "perplexity": round(ppl, 3),
                    "prune_seconds": round(report.seconds, 1),
                    "achieved": report.achieved,
                    "dampings": {f"{d:g}": c for d, c in sorted(dampings.items())},
                }
            )
            log(f"{n}x{t} {name}: ppl {ppl:.3f} in {report.seconds:.0f} s {dict(dampings)}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    protocol = {
        "command": " ".join(["python", *sys.argv]),
        "model": args.model,
        "pattern": str(pattern),
        "sparsity": args.sparsity,
        "seed": args.seed,
        "eval_windows": args.eval_windows,
        "seconds": round(time.perf_counter() - _START, 1),
    }
    args.out.write_text(json.dumps({"protocol": protocol, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
