"""The refit's cost as layers grow: exact per-row solve, conjugate gradients, and SparseGPT.

`layers`: per layer, on the same Hessian and (for the refits) the same Wanda mask, the wall
time of each method and the output error it leaves, relative to the dense layer's output:
tr(D H D^T) / tr(W H W^T) for D = W' - W. Real layers are a model's first block with its
calibration Hessians; a synthetic layer has correlated inputs with outlier channels (what LLM
activations look like) at a given width. An exact solve too slow to finish is timed on
`--exact-rows` rows and scaled to all of them (rows are independent and equal in cost).

`ppl`: the bundled model pruned Wanda + refit with each solver, and SparseGPT, with the same
calibration, measured on held-out windows: the refit's quality as shipped.

    .venv/bin/python bench/refit_scaling.py layers --model smollm2-135m
    .venv/bin/python bench/refit_scaling.py layers --synthetic 4096x4096
    .venv/bin/python bench/refit_scaling.py ppl --model smollm2-135m
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from optishear.config import CalibrationConfig, EvaluationConfig, PruneConfig
from optishear.core.patterns import Pattern
from optishear.core.settings import LibrarySettings
from optishear.data.text import evaluation_stream, sample_calibration
from optishear.evaluation.perplexity import perplexity
from optishear.methods.masks import prune_mask
from optishear.methods.metrics import wanda_score
from optishear.methods.sparsegpt import sparsegpt_prune
from optishear.methods.stats import recording_inputs
from optishear.model.blocks import capture_block_inputs, decoder_blocks, linear_sublayers, run_block
from optishear.model.hf import load_model
from optishear.recipe.prune import prune_model
from optishear.refit.reconstruct import least_squares_refit


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def rel_error(W: Tensor, W2: Tensor, H: Tensor) -> float:
    D = W2 - W
    return float(((D @ H) * D).sum() / ((W @ H) * W).sum())


def first_block_layers(model_name: str, n: int, seq_len: int) -> list[tuple[str, Tensor, Tensor]]:
    """(name, weight, Hessian) of every linear of the model's first block, from calibration."""
    model, tokenizer, _ = load_model(model_name, settings=LibrarySettings())
    calib = sample_calibration(tokenizer, CalibrationConfig(n_samples=n, seq_len=seq_len))
    inputs = capture_block_inputs(model, calib, 8)
    block = decoder_blocks(model)[0]
    with recording_inputs(linear_sublayers(block), hessian=True) as stats:
        run_block(block, inputs.hidden, inputs.calls[0], inputs.batch_size, keep_output=False)
    lins = linear_sublayers(block)
    return [
        (name, lins[name].weight.detach().float().clone(), s.hessian) for name, s in stats.items()
    ]


def synthetic_layer(d_out: int, d_in: int, tokens: int, seed: int = 0) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(d_out, d_in, generator=g) / d_in**0.5
    X = torch.randn(tokens, d_in // 4, generator=g) @ torch.randn(d_in // 4, d_in, generator=g)
    X += 0.3 * torch.randn(tokens, d_in, generator=g)
    X[:, : max(1, d_in // 256)] *= 20  # a few outlier channels
    return W, X.T @ X / tokens


def time_layer(
    name: str, W: Tensor, H: Tensor, pattern: Pattern, exact_rows: int | None
) -> dict[str, Any]:
    act_sq = torch.diag(H)  # X^2 summed over tokens, up to the Gram matrix's scale
    mask = prune_mask(wanda_score(W, act_sq), 0.5, pattern)
    row: dict[str, Any] = {"layer": name, "d_out": W.shape[0], "d_in": W.shape[1]}
    row["masked_error"] = rel_error(W, W.masked_fill(mask, 0.0), H)

    cg = W.clone()
    t = time.perf_counter()
    row["cg_iterations"] = least_squares_refit(cg, H, mask, solver="cg")
    row["cg_s"] = time.perf_counter() - t
    row["cg_error"] = rel_error(W, cg, H)

    rows = W.shape[0] if exact_rows is None else min(exact_rows, W.shape[0])
    exact = W[:rows].clone()
    t = time.perf_counter()
    least_squares_refit(exact, H, mask[:rows], solver="exact")
    row["exact_s"] = (time.perf_counter() - t) * W.shape[0] / rows
    row["exact_rows_timed"] = rows
    # errors on the rows the exact solve did, for both solvers (all rows unless --exact-rows)
    row["exact_error"] = rel_error(W[:rows], exact, H)
    row["cg_error_exact_rows"] = rel_error(W[:rows], cg[:rows], H)

    sgpt = W.clone()
    t = time.perf_counter()
    sparsegpt_prune(sgpt, H, 0.5, pattern)
    row["sparsegpt_s"] = time.perf_counter() - t
    row["sparsegpt_error"] = rel_error(W, sgpt, H)
    row["cg_over_sparsegpt"] = row["cg_s"] / row["sparsegpt_s"]
    row["exact_over_sparsegpt"] = row["exact_s"] / row["sparsegpt_s"]
    return row


def cmd_layers(args: argparse.Namespace) -> None:
    pattern = Pattern.parse(args.pattern)
    if args.synthetic:
        d_out, d_in = (int(x) for x in args.synthetic.split("x"))
        W, H = synthetic_layer(d_out, d_in, args.tokens)
        layers = [(f"synthetic {d_out}x{d_in}", W, H)]
    else:
        layers = first_block_layers(args.model, args.nsamples, args.seqlen)
    for name, W, H in layers:
        row = {"model": args.model if not args.synthetic else "synthetic", "pattern": str(pattern)}
        row |= time_layer(name, W, H, pattern, args.exact_rows)
        log(json.dumps(row))
        print(json.dumps(row), flush=True)


def cmd_ppl(args: argparse.Namespace) -> None:
    library = LibrarySettings()
    pattern = Pattern.parse(args.pattern)
    rows = []
    for label, config in (
        ("wanda+refit exact", {"method": "wanda", "reconstruct": True, "refit_solver": "exact"}),
        ("wanda+refit cg", {"method": "wanda", "reconstruct": True, "refit_solver": "cg"}),
        ("sparsegpt", {"method": "sparsegpt"}),
    ):
        model, tokenizer, _ = load_model(args.model, settings=library)
        calib = sample_calibration(
            tokenizer, CalibrationConfig(n_samples=args.nsamples, seq_len=args.seqlen), library
        )
        prune = PruneConfig(sparsity=0.5, pattern=pattern, **config)
        t = time.perf_counter()
        prune_model(model, calib, prune)
        seconds = time.perf_counter() - t
        evaluation = EvaluationConfig(seq_len=512, windows=args.windows)
        ppl = perplexity(model, evaluation_stream(tokenizer, evaluation, library), evaluation)
        row = {"label": label, "pattern": str(pattern), "prune_s": seconds, "ppl": ppl.perplexity}
        log(json.dumps(row))
        rows.append(row)
        del model
    print(json.dumps(rows, indent=2))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    lay = sub.add_parser("layers")
    lay.add_argument("--model", default="smollm2-135m")
    lay.add_argument("--synthetic", default=None, help="D_OUTxD_IN: a synthetic layer instead")
    lay.add_argument("--tokens", type=int, default=8192, help="synthetic calibration tokens")
    lay.add_argument("--exact-rows", type=int, default=None, help="time the exact solve on N rows")
    lay.add_argument("--pattern", default="unstructured")
    lay.add_argument("--nsamples", type=int, default=32)
    lay.add_argument("--seqlen", type=int, default=256)
    lay.set_defaults(fn=cmd_layers)
    ppl = sub.add_parser("ppl")
    ppl.add_argument("--model", default="smollm2-135m")
    ppl.add_argument("--pattern", default="unstructured")
    ppl.add_argument("--nsamples", type=int, default=32)
    ppl.add_argument("--seqlen", type=int, default=256)
    ppl.add_argument("--windows", type=int, default=16)
    ppl.add_argument("--json", type=Path, default=None)
    ppl.set_defaults(fn=cmd_ppl)
    args = p.parse_args()
    torch.set_grad_enabled(False)
    args.fn(args)


if __name__ == "__main__":
    main()
