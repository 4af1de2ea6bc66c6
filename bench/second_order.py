"""Issue 14: masks from second-order genomes against Wanda and SparseGPT, mask-only and refit.

Every row prunes the same dense model with the same calibration sample (the settings of
bench/metric_truth.py) as it ships (statistics from the pruned prefix), and is measured on
the same held-out windows. Genomes are given by spec; `--refit` ships the genomes it names with their masks
followed by our least-squares refit; SparseGPT is the reference with its own weight update.

  python bench/second_order.py --pattern 2:4 \
      --genomes "f1=identity;f2=square,h=rho;f2=identity,h=sqrt_rho" --sparsegpt \
      --refit "f1=identity;f2=square,h=rho"
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

from optishear.config import CalibrationConfig, PruneConfig
from optishear.core.genome import Genome
from optishear.data.text import sample_calibration
from optishear.evaluation.perplexity import perplexity
from optishear.model.blocks import block_param_counts
from optishear.model.hf import load_model
from optishear.recipe.candidates import Candidate
from optishear.recipe.prune import prune_model
from optishear.recipe.shipped import prune_candidate

sys.path.insert(0, str(Path(__file__).parent))
from metric_truth import held_out, log, parse_pattern


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--pattern", default="2:4")
    p.add_argument("--genomes", default="f1=identity;f2=square,h=rho;f2=identity,h=sqrt_rho")
    p.add_argument("--refit", default="", help="';'-separated genomes shipped with our refit")
    p.add_argument("--sparsegpt", action="store_true")
    p.add_argument("--nsamples", type=int, default=32)
    p.add_argument("--seqlen", type=int, default=256)
    p.add_argument("--eval-windows", type=int, default=16)
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--append", action="store_true", help="add rows to an existing --out")
    args = p.parse_args()
    tag = args.pattern.replace(":", "-")
    out_path = args.out or Path(f"bench/out/second_order_{args.model}_{tag}.json")
    pattern, target = parse_pattern(args.pattern)
    torch.manual_seed(0)
    model, tok, _ = load_model(args.model, dtype=torch.float32)
    dense = {k: v.clone() for k, v in model.state_dict().items()}
    calib = sample_calibration(tok, CalibrationConfig(n_samples=args.nsamples, seq_len=args.seqlen))
    stream, ev = held_out(tok, args.eval_windows)
    n_blocks = len(block_param_counts(model))
    out: dict[str, Any] = {"args": vars(args) | {"out": str(out_path)}, "rows": []}
    if args.append and out_path.is_file():
        out["rows"] = json.loads(out_path.read_text())["rows"]

    def row(name: str, prune: Any) -> None:
        model.load_state_dict(dense)
        t0 = time.perf_counter()
        report = prune()
        seconds = time.perf_counter() - t0
        ppl = perplexity(model, stream, ev).perplexity
        out["rows"].append(
            {"row": name, "perplexity": ppl, "achieved": report.achieved, "seconds": seconds}
        )
        out_path.parent.mkdir(parents=True, exist_ok=True)
        out_path.write_text(json.dumps(out, indent=2))
        log(f"{name}: ppl {ppl:.3f} at {report.achieved:.4f} ({seconds:.0f} s)")

    genomes = [Genome.parse(spec) for spec in args.genomes.split(";") if spec.strip()]
    for g in genomes:
        c = Candidate(g, (target,) * n_blocks)
        row(g.formula(), lambda c=c: prune_candidate(model, calib, c, pattern))
    if args.sparsegpt:
        config = PruneConfig(method="sparsegpt", sparsity=target, pattern=pattern)
        row("SparseGPT", lambda: prune_model(model, calib, config))
    for spec in filter(None, (s.strip() for s in args.refit.split(";"))):
        g = Genome.parse(spec)
        c = Candidate(g, (target,) * n_blocks)
        row(
            f"{g.formula()} + refit",
            lambda c=c: prune_candidate(model, calib, c, pattern, update="lstsq"),
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
