"""The refit's damping choice, before and after it stopped early: every damping solved (before),
against the scan, strongest first, stopped once the held-aside error stops falling
(`SurvivorUpdate`, now); each solve warm-started from the last, to CG's tolerance. Per real layer
of the given blocks (Wanda's masks; Hessians from all but every `--holdout`th calibration
sequence, the held-aside Gram matrix from those), one torch thread: CG steps, seconds, the
damping each way chooses, and the held-aside output error each leaves.

    .venv/bin/python bench/refit_choice.py --model smollm2-135m --blocks 0,15,29 \\
        --out bench/results/refit_choice_smollm2-135m.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any
from unittest import mock

import torch
from sparsegpt_speed import layer_stats  # beside this script
from torch import Tensor

from optishear.core.patterns import Pattern
from optishear.methods.masks import prune_mask
from optishear.methods.metrics import wanda_score
from optishear.refit import reconstruct, update
from optishear.refit.update import DAMPINGS, SurvivorUpdate


def layers(
    model_name: str, nsamples: int, seqlen: int, blocks: str, holdout: int
) -> dict[str, tuple[Tensor, Tensor, Tensor]]:
    """(weight, Hessian, held-aside Gram matrix) of every linear of `blocks`, from one dense
    forward over the calibration sample."""
    out = {}
    for key, (W, stats) in layer_stats(model_name, nsamples, seqlen, blocks, holdout).items():
        held = stats.held_gram
        assert held is not None
        out[key] = (W.float(), stats.hessian, held)
    return out


def library_choice(
    W: Tensor, H: Tensor, held: Tensor, mask: Tensor, pattern: Pattern
) -> tuple[float | None, Tensor, int]:
    """Now: `SurvivorUpdate`'s choice, with the CG steps of its solves counted."""
    steps: list[int] = []
    real = reconstruct.least_squares_refit

    def counted(*args: Any, **kwargs: Any) -> int:
        steps.append(real(*args, **kwargs))
        return steps[-1]

    out = W.clone()
    with mock.patch.object(update, "least_squares_refit", counted):
        damping = SurvivorUpdate("lstsq").apply(out, W, H, mask, 0.5, pattern, held)
    return damping, out, sum(steps)


def held_error(W: Tensor, dense: Tensor, held: Tensor) -> float:
    diff = W - dense
    return float(((diff @ held) * diff).sum())


def scan_all(W: Tensor, H: Tensor, held: Tensor, mask: Tensor) -> tuple[float, Tensor, int]:
    """Before: every damping solved to CG's tolerance, each from the last one's solution."""
    best: tuple[float, float, Tensor] | None = None
    previous, steps = None, 0
    for damping in sorted(DAMPINGS, reverse=True):
        w = W.clone()
        steps += reconstruct.least_squares_refit(w, H, mask, percdamp=damping, start=previous)
        previous = w
        error = held_error(w, W, held)
        if best is None or error < best[0]:
            best = (error, damping, w)
    assert best is not None
    return best[1], best[2], steps


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--blocks", default="0,15,29")
    p.add_argument("--pattern", default="unstructured")
    p.add_argument("--sparsity", type=float, default=0.5)
    p.add_argument("--nsamples", type=int, default=32)
    p.add_argument("--seqlen", type=int, default=128)
    p.add_argument("--holdout", type=int, default=8)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()
    torch.set_num_threads(1)
    torch.set_grad_enabled(False)
    start = time.perf_counter()
    pattern = Pattern.parse(args.pattern)
    rows = []
    found = layers(args.model, args.nsamples, args.seqlen, args.blocks, args.holdout)
    for key, (W, H, held) in found.items():
        mask = prune_mask(wanda_score(W, torch.diag(H)), args.sparsity, pattern)
        t0 = time.perf_counter()
        before_damping, before, before_steps = scan_all(W, H, held, mask)
        before_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        after_damping, after, after_steps = library_choice(W, H, held, mask, pattern)
        after_s = time.perf_counter() - t0
        row = {
            "layer": key,
            "shape": list(W.shape),
            "before_damping": before_damping,
            "after_damping": after_damping,
            "before_steps": before_steps,
            "after_steps": after_steps,
            "before_s": before_s,
            "after_s": after_s,
            "before_held_error": held_error(before, W, held),
            "after_held_error": held_error(after, W, held),
        }
        rows.append(row)
        print(json.dumps(row), file=sys.stderr, flush=True)
    protocol = {
        "command": " ".join(["python", *sys.argv]),
        "model": args.model,
        "pattern": str(pattern),
        "sparsity": args.sparsity,
        "calibration": [args.nsamples, args.seqlen],
        "holdout": args.holdout,
        "threads": 1,
        "seconds": round(time.perf_counter() - start, 1),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"protocol": protocol, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
