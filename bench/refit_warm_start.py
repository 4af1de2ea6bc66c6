"""CG steps of the refit's damping choice: each damping solved from the dense survivors, against
each solved from the next stronger damping's solution (what `--refit-holdout` does), on the
bundled model's real layers (Wanda's 2:4 masks), one torch thread.

    .venv/bin/python bench/refit_warm_start.py --blocks 0,15 \\
        --out bench/results/refit_warm_start_smollm2-135m.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from sparsegpt_speed import hessians

from optishear.core.patterns import Pattern
from optishear.methods.masks import prune_mask
from optishear.methods.metrics import wanda_score
from optishear.refit.reconstruct import least_squares_refit
from optishear.refit.update import DAMPINGS


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--blocks", default="0,15")
    p.add_argument("--pattern", default="2:4")
    p.add_argument("--nsamples", type=int, default=32)
    p.add_argument("--seqlen", type=int, default=128)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()
    torch.set_num_threads(1)
    start = time.perf_counter()
    pattern = Pattern.parse(args.pattern)
    rows = []
    for key, (W, H) in hessians(args.model, args.nsamples, args.seqlen, args.blocks).items():
        mask = prune_mask(wanda_score(W, torch.diag(H)), 0.5, pattern)
        previous = None
        for damping in sorted(DAMPINGS, reverse=True):
            cold, warm = W.clone(), W.clone()
            t0 = time.perf_counter()
            cold_steps = least_squares_refit(cold, H, mask, percdamp=damping)
            cold_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            warm_steps = least_squares_refit(warm, H, mask, percdamp=damping, start=previous)
            warm_s = time.perf_counter() - t0
            previous = warm.clone()
            rows.append(
                {
                    "layer": key,
                    "damping": damping,
                    "cold_steps": cold_steps,
                    "warm_steps": warm_steps,
                    "cold_s": cold_s,
                    "warm_s": warm_s,
                }
            )
            print(f"{key:<22} {damping:g}: {cold_steps} -> {warm_steps} steps", file=sys.stderr)
    protocol = {
        "command": " ".join(["python", *sys.argv]),
        "model": args.model,
        "pattern": str(pattern),
        "calibration": [args.nsamples, args.seqlen],
        "threads": 1,
        "seconds": round(time.perf_counter() - start, 1),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"protocol": protocol, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
