"""Pruning quality on the bundled model: held-out perplexity and prune time of every method.

Each method prunes the same dense weights with the same calibration sample; the reference
Wanda and magnitude of bench/reference_prune.py must land within 3% of the library's perplexity.
Run from the repository root: python bench/quality.py --out bench/out/quality.json
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import torch
from reference_prune import reference_prune
from torch import Tensor, nn
from transformers import AutoModelForCausalLM, LlamaConfig

from optishear.config import CalibrationConfig, EvaluationConfig, PlanConfig, PruneConfig
from optishear.core.patterns import Pattern
from optishear.data.text import load_texts, sample_calibration, tokenize_stream
from optishear.evaluation.perplexity import perplexity
from optishear.model.hf import load_model
from optishear.recipe.prune import prune_model

MODEL = "smollm2-135m"
EVAL_SEQ_LEN = 512
TOLERANCE = 0.03  # reference vs library perplexity, relative
PATTERNS = (Pattern(), Pattern(2, 4), Pattern(4, 8))
LIBRARY_METHODS = ("magnitude", "wanda", "ria", "sparsegpt")
REFERENCE_METHODS = ("magnitude", "wanda")
_START = time.perf_counter()


def log(msg: str) -> None:
    print(f"[{time.perf_counter() - _START:7.1f}s] {msg}", file=sys.stderr, flush=True)


def zero_fraction(model: nn.Module) -> float:
    """Share of exactly-zero weights among the decoder blocks' linears, measured directly."""
    zeros = total = 0
    for mod in model.model.layers.modules():
        if isinstance(mod, nn.Linear):
            zeros += int((mod.weight == 0).sum())
            total += mod.weight.numel()
    return zeros / total


def tiny_mask_check() -> None:
    """Before the long run: on a tiny random Llama the reference masks must equal the library's."""
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=128,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
    )
    base = AutoModelForCausalLM.from_config(cfg).eval()
    ids = torch.randint(0, 128, (32, 64), generator=torch.Generator().manual_seed(1))
    for method in REFERENCE_METHODS:
        for pattern in PATTERNS:
            ratio = pattern.sparsity if pattern.structured else 0.5
            lib, ref = copy.deepcopy(base), copy.deepcopy(base)
            prune_model(lib, ids, PruneConfig(method=method, sparsity=ratio, pattern=pattern))
            masks = reference_prune(ref, method, ids, ratio, pattern.n, pattern.m)
            for idx, block in enumerate(lib.model.layers):
                for name, mod in block.named_modules():
                    if isinstance(mod, nn.Linear) and not torch.equal(
                        mod.weight == 0, masks[f"{idx}.{name}"]
                    ):
                        sys.exit(
                            f"tiny-model check: {method} {pattern} masks differ at {idx}.{name}"
                        )
    log("tiny-model check: reference masks equal the library's (wanda, magnitude; 3 patterns)")


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--eval-windows", type=int, default=32, help="held-out 512-token windows")
    p.add_argument("--nsamples", type=int, default=32, help="calibration sequences")
    p.add_argument("--seqlen", type=int, default=256, help="calibration sequence length")
    p.add_argument("--seed", type=int, default=0, help="calibration sampling seed")
    p.add_argument("--out", type=Path, help="write every row as JSON here")
    p.add_argument("--skip-reference", action="store_true", help="library methods only")
    p.add_argument(
        "--methods",
        default=",".join((*LIBRARY_METHODS, "owl+wanda")),
        help="comma-separated library methods to run (default: all); the reference checks "
        "need magnitude and wanda",
    )
    return p.parse_args()


def fmt_row(r: dict[str, Any]) -> str:
    if r["ppl"] is None:
        return f"| {r['method']} | {r['pattern']} | n/a | n/a | n/a | {r['note']} |"
    diff = ""
    if "rel_diff" in r:
        diff = (
            f"{r['rel_diff'] * 100:+.2f}% {r['check']}; masks agree {r['agree'] * 100:.2f}%"
            + {True: r", differ only among tied \|W\|", False: ", NOT tie-equivalent", None: ""}[
                r["tie_equivalent"]
            ]
        )
    return (
        f"| {r['method']} | {r['pattern']} | {r['achieved']:.4f} | {r['ppl']:.3f} "
        f"| {r['seconds']:.1f} | {diff} |"
    )


def pruned_masks(model: nn.Module) -> dict[str, Tensor]:
    """{"i.name": weight == 0} for every linear of the decoder blocks."""
    return {
        f"{idx}.{name}": mod.weight == 0
        for idx, block in enumerate(model.model.layers)
        for name, mod in block.named_modules()
        if isinstance(mod, nn.Linear)
    }


def tie_equivalent(
    lib: dict[str, Tensor], ref: dict[str, Tensor], dense: dict[str, Tensor], pattern: Pattern
) -> bool:
    """Magnitude only: do both prune the same multiset of |W| in every comparison group?

    Weights that were already zero count as pruned on both sides (they are zero either way).
    """
    for key, lib_mask in lib.items():
        A = dense[f"model.layers.{key}.weight"].abs()  # (d_out, d_in)
        both = [lib_mask | (A == 0), ref[key] | (A == 0)]
        if pattern.structured:
            vals = [
                torch.where(mk, A, torch.inf).reshape(A.shape[0], -1, pattern.m).sort(-1).values
                for mk in both
            ]
        else:
            vals = [A[mk].sort().values for mk in both]
        if not torch.equal(vals[0], vals[1]):
            return False
    return True


def main() -> int:
    args = parse_args()
    methods = {m.strip() for m in args.methods.split(",") if m.strip()}
    unknown = methods - {*LIBRARY_METHODS, "owl+wanda"}
    if unknown:
        sys.exit(f"unknown methods: {sorted(unknown)}")
    if not args.skip_reference and not set(REFERENCE_METHODS) <= methods:
        sys.exit("the reference checks need --methods to include magnitude and wanda")
    if not args.skip_reference:
        tiny_mask_check()
    model, tokenizer, _ = load_model(MODEL)
    calib = sample_calibration(
        tokenizer,
        CalibrationConfig(
            source="wiki", n_samples=args.nsamples, seq_len=args.seqlen, seed=args.seed
        ),
    )
    stream = tokenize_stream(tokenizer, load_texts("wiki", "evaluation"))
    eval_cfg = EvaluationConfig(seq_len=EVAL_SEQ_LEN, windows=args.eval_windows, batch_size=4)
    dense_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    log(
        f"loaded {MODEL}; calibration {tuple(calib.shape)}; held-out stream {stream.numel()} tokens"
    )

    rows: list[dict[str, Any]] = []

    def evaluate(row: dict[str, Any]) -> dict[str, Any]:
        ppl = perplexity(model, stream, eval_cfg)
        row.update(ppl=ppl.perplexity, eval_tokens=ppl.n_tokens, eval_windows=ppl.n_windows)
        row["measured_zeros"] = zero_fraction(model)
        rows.append(row)
        log(f"{row['method']} {row['pattern']}: ppl {ppl.perplexity:.3f} ({ppl.seconds:.0f}s eval)")
        return row

    evaluate({"method": "dense", "pattern": "-", "achieved": zero_fraction(model), "seconds": 0.0})
    for pattern in PATTERNS:
        ratio = pattern.sparsity if pattern.structured else 0.5
        library: dict[str, tuple[float, dict[str, Tensor]]] = {}  # ppl and masks, for checks
        runs = [(m, PlanConfig()) for m in LIBRARY_METHODS] + [("wanda", PlanConfig(kind="owl"))]
        for method, plan in runs:
            label = "owl+wanda" if plan.kind == "owl" else method
            if label not in methods:
                continue
            if pattern.structured and plan.kind == "owl":
                rows.append(
                    {
                        "method": label,
                        "pattern": str(pattern),
                        "ppl": None,
                        "note": "n/a: OptiShear keeps every block at N/M under N:M",
                    }
                )
                continue
            model.load_state_dict(dense_state)
            log(f"pruning {label} {pattern} ...")
            cfg = PruneConfig(method=method, sparsity=ratio, pattern=pattern, plan=plan)
            report = prune_model(model, calib, cfg)
            row = evaluate(
                {
                    "method": label,
                    "pattern": str(pattern),
                    "achieved": report.achieved,
                    "seconds": report.seconds,
                    "plan": report.plan,
                }
            )
            if abs(row["measured_zeros"] - report.achieved) > 1e-4:
                log(
                    f"WARNING: report says {report.achieved:.6f} pruned, weights show "
                    f"{row['measured_zeros']:.6f} zeros"
                )
            if label in REFERENCE_METHODS:
                library[label] = (row["ppl"], pruned_masks(model))
        if args.skip_reference:
            continue
        # The last run varies only how ties are broken, to show how much that alone moves ppl.
        for method, ties_last in [(m, False) for m in REFERENCE_METHODS] + [("magnitude", True)]:
            label = f"reference {method}" + (" (ties last)" if ties_last else "")
            model.load_state_dict(dense_state)
            log(f"{label} {pattern} ...")
            start = time.perf_counter()
            masks = reference_prune(model, method, calib, ratio, pattern.n, pattern.m, ties_last)
            seconds = time.perf_counter() - start
            pruned = sum(int(mk.sum()) for mk in masks.values())
            total = sum(mk.numel() for mk in masks.values())
            achieved = pruned / total
            row = evaluate(
                {"method": label, "pattern": str(pattern), "achieved": achieved, "seconds": seconds}
            )
            lib_ppl, lib_masks = library[method]
            row["rel_diff"] = (row["ppl"] - lib_ppl) / lib_ppl
            row["check"] = (
                "info" if ties_last else "PASS" if abs(row["rel_diff"]) <= TOLERANCE else "FAIL"
            )
            ref_zero = pruned_masks(model)
            same = sum(int((lib_masks[k] == ref_zero[k]).sum()) for k in ref_zero)
            row["agree"] = same / sum(m.numel() for m in ref_zero.values())
            row["tie_equivalent"] = (
                tie_equivalent(lib_masks, masks, dense_state, pattern)
                if method == "magnitude"
                else None
            )
            log(
                f"{label} {pattern}: {row['rel_diff'] * 100:+.2f}% {row['check']}, masks agree "
                f"{row['agree'] * 100:.3f}%, tie-equivalent {row['tie_equivalent']}"
            )

    model.load_state_dict(dense_state)
    n_tok = rows[0]["eval_tokens"]
    print(f"Command: {shlex.join([os.path.relpath(sys.executable), *sys.argv])}\n")
    print(
        f"Model {MODEL}; calibration {args.nsamples}x{args.seqlen} (wiki calibration split, "
        f"seed {args.seed}); held-out: wiki evaluation split, {rows[0]['eval_windows']} windows "
        f"x {EVAL_SEQ_LEN} tokens ({n_tok} predicted tokens)\n"
    )
    print("| method | pattern | sparsity | held-out ppl | prune s | reference vs library |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(fmt_row(r))
    checks = [r for r in rows if r.get("check") in ("PASS", "FAIL")]
    failed = [r for r in checks if r["check"] == "FAIL"]
    print(f"\nReference checks: {len(checks) - len(failed)}/{len(checks)} PASS (tolerance 3%)")
    print(f"Total time: {time.perf_counter() - _START:.0f} s")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        payload = {
            "argv": sys.argv,
            "args": {k: str(v) for k, v in vars(args).items()},
            "rows": rows,
        }
        args.out.write_text(json.dumps(payload, indent=2) + "\n")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
