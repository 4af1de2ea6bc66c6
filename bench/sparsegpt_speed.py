"""SparseGPT's column loop: the engine's (a transposed block, two kernel calls a column) against
the loop as the paper writes it (Frantar & Alistarh, 2023, Algorithm 1), on the bundled model's
real layers, one torch thread (as a Ray actor runs), the two alternating.

For every linear layer of the chosen blocks, the Hessian comes from a dense forward of the
calibration sample; both implementations prune the same weights with the same Hessian, and the
script counts the mask entries they choose differently and the largest weight difference. The
engine breaks saliency ties toward the lower index (`prune_mask`); the paper's topk breaks them
as it happens to: on a checkpoint stored in bf16, equal magnitudes make such ties.

    .venv/bin/python bench/sparsegpt_speed.py --blocks 0,15,29 --repeats 3 \\
        --out bench/results/sparsegpt_speed_smollm2-135m.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from torch import Tensor

from optishear.config import CalibrationConfig
from optishear.core.patterns import Pattern
from optishear.data.text import sample_calibration
from optishear.methods.sparsegpt import _inverse_hessian_factor, sparsegpt_prune
from optishear.methods.stats import LayerStats, recording_inputs
from optishear.model.blocks import decoder_blocks, linear_sublayers
from optishear.model.hf import load_model


def paper_loop(W: Tensor, H: Tensor, ratio: float, pattern: Pattern) -> tuple[Tensor, Tensor]:
    """Algorithm 1 of the paper, block by block and column by column (the engine's loop before
    this change): the pruned weights and the mask."""
    W = W.float().clone()
    d_in = W.shape[1]
    H = H.float().clone()
    dead = torch.diag(H) == 0
    H[dead, dead] = 1.0
    W[:, dead] = 0.0
    U = _inverse_hessian_factor(H, 0.01)
    mask = torch.zeros_like(W, dtype=torch.bool)
    bs = 128 - 128 % pattern.m if pattern.structured else 128
    for i1 in range(0, d_in, bs):
        i2 = min(i1 + bs, d_in)
        W1, U1 = W[:, i1:i2].clone(), U[i1:i2, i1:i2]
        Q1, E1 = torch.zeros_like(W1), torch.zeros_like(W1)
        d = torch.diag(U1)
        if not pattern.structured:
            sal = (W1**2 / d**2).flatten()
            block = torch.zeros(sal.numel(), dtype=torch.bool)
            block[torch.topk(sal, round(sal.numel() * ratio), largest=False).indices] = True
            mask[:, i1:i2] = block.view_as(W1)
        for i in range(i2 - i1):
            if pattern.structured and i % pattern.m == 0:
                sal = W1[:, i : i + pattern.m] ** 2 / d[i : i + pattern.m] ** 2
                idx = torch.topk(sal, pattern.n, dim=1, largest=False).indices
                mask[:, i1 + i : i1 + i + pattern.m].scatter_(1, idx, True)
            w = W1[:, i]
            q = w.masked_fill(mask[:, i1 + i], 0.0)
            Q1[:, i] = q
            err = (w - q) / U1[i, i]
            W1[:, i:] -= err[:, None] * U1[i, i:][None, :]
            E1[:, i] = err
        W[:, i1:i2] = Q1
        W[:, i2:] -= E1 @ U[i1:i2, i2:]
    W[mask] = 0.0
    return W, mask


def layer_stats(
    model_name: str, nsamples: int, seqlen: int, blocks: str, holdout: int = 0
) -> dict[str, tuple[Tensor, LayerStats]]:
    """(weight, input statistics with the Hessian) of every linear layer of `blocks` ("0,15":
    indices), from one dense forward over `nsamples` x `seqlen` calibration tokens of the
    bundled text; with `holdout` N, every Nth sequence only gives the held-aside Gram matrix."""
    model, tokenizer, _ = load_model(model_name)
    calib = sample_calibration(tokenizer, CalibrationConfig(n_samples=nsamples, seq_len=seqlen))
    layers = {
        f"{b}.{name}": lin
        for b in (int(i) for i in blocks.split(","))
        for name, lin in linear_sublayers(decoder_blocks(model)[b]).items()
    }
    with torch.no_grad(), recording_inputs(layers, hessian=True, holdout=holdout) as stats:
        for i in range(0, calib.shape[0], 8):
            model(calib[i : i + 8], use_cache=False)
    return {k: (lin.weight.detach().clone(), stats[k]) for k, lin in layers.items()}


def hessians(
    model_name: str, nsamples: int, seqlen: int, blocks: str
) -> dict[str, tuple[Tensor, Tensor]]:
    """(weight, SparseGPT's H) of every linear layer of `blocks` (see layer_stats)."""
    found = layer_stats(model_name, nsamples, seqlen, blocks)
    return {k: (W, stats.hessian) for k, (W, stats) in found.items()}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--blocks", default="0,15,29")
    p.add_argument("--patterns", default="unstructured,2:4")
    p.add_argument("--nsamples", type=int, default=32)
    p.add_argument("--seqlen", type=int, default=256)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()
    torch.set_num_threads(1)
    start = time.perf_counter()
    layers = hessians(args.model, args.nsamples, args.seqlen, args.blocks)
    rows = []
    for text in args.patterns.split(","):
        pattern = Pattern.parse(text)
        for key, (W, H) in layers.items():
            times: dict[str, list[float]] = {"paper": [], "engine": []}
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                ref_w, ref_mask = paper_loop(W, H, 0.5, pattern)
                times["paper"].append(time.perf_counter() - t0)
                got = W.clone()
                t0 = time.perf_counter()
                mask = sparsegpt_prune(got, H, 0.5, pattern)
                times["engine"].append(time.perf_counter() - t0)
            rows.append(
                {
                    "pattern": str(pattern),
                    "layer": key,
                    "shape": list(W.shape),
                    "paper_s": min(times["paper"]),
                    "engine_s": min(times["engine"]),
                    "mask_differences": int((mask != ref_mask).sum()),
                    "max_weight_diff": float((got - ref_w).abs().max()),
                }
            )
            r = rows[-1]
            print(
                f"{r['pattern']:>12} {key:<22} paper {r['paper_s']:.3f} s  engine "
                f"{r['engine_s']:.3f} s  mask differences {r['mask_differences']}  "
                f"max diff {r['max_weight_diff']:.1e}",
                file=sys.stderr,
            )
    protocol = {
        "command": " ".join(["python", *sys.argv]),
        "model": args.model,
        "calibration": [args.nsamples, args.seqlen],
        "threads": 1,
        "repeats": args.repeats,
        "torch": torch.__version__,
        "seconds": round(time.perf_counter() - start, 1),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"protocol": protocol, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
