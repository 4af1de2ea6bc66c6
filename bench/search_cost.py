"""Cost of one candidate evaluation against one dense forward pass over the same tokens.

Measured side by side, alternating, in one process: the dense forward is the model's full
forward (logits included) over the calibration batch, the candidate evaluation is what the
search pays per genome (masking every layer from the dense backup, the forward pass to the
lm_head input, the error accumulation, and the restore). Beside it: the same candidate with
its masks cached (a layer-wise stage's), its child with one block changed a third of the way
in (the blocks before it kept: optishear.search.prefix), and the KL alone on one candidate's
lm_head inputs, by the engine's one-pass logsumexp and by torch.logsumexp.

    .venv/bin/python bench/search_cost.py --nsamples 16 --seqlen 256 --repeats 5 \
        --out bench/results/search_cost_prefix_kl.json

On a GPU machine that cannot fetch the bundled weights, `--config-dir` builds the same
architecture with random weights from a config.json and feeds random token ids: the timing
depends on shapes, not on weight values.
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import sys
import time
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM

from optishear.config import CalibrationConfig
from optishear.core.genome import Genome
from optishear.core.patterns import Pattern
from optishear.data.text import sample_calibration
from optishear.model.hf import load_model
from optishear.search.fitness import Candidate, FitnessEngine


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--nsamples", type=int, default=16)
    parser.add_argument("--seqlen", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--pattern", default="unstructured")
    parser.add_argument("--objective", choices=("kl", "logits_fro"), default="kl")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    parser.add_argument("--config-dir", help="random weights of this config.json's architecture")
    parser.add_argument(
        "--profile", action="store_true", help="print where one new-genome evaluation spends"
    )
    parser.add_argument(
        "--execution",
        choices=("resident", "streaming"),
        default="resident",
        help="streaming: decoder blocks in host memory, each copied to the device while it runs",
    )
    parser.add_argument("--out", type=Path, help="also write the numbers to this JSON file")
    args = parser.parse_args()
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)

    if args.config_dir:
        torch.manual_seed(0)
        config = AutoConfig.from_pretrained(args.config_dir)
        model = AutoModelForCausalLM.from_config(config, dtype=dtype).to(device).eval()
        ids = torch.randint(0, config.vocab_size, (args.nsamples, args.seqlen))
        source = f"{args.config_dir} (random weights)"
    else:
        model, tok, _ = load_model(args.model, device=device, dtype=dtype)
        ids = sample_calibration(
            tok, CalibrationConfig(n_samples=args.nsamples, seq_len=args.seqlen)
        )
        source = args.model

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    if args.execution == "streaming":
        from optishear.model.streaming import BlockStreamer

        BlockStreamer(model, device)
    pattern = Pattern.parse(args.pattern)
    t0 = time.perf_counter()
    engine = FitnessEngine(
        model, ids, pattern, batch_size=args.batch_size, objective=args.objective
    )
    setup = time.perf_counter() - t0
    n_blocks = engine.n_blocks
    genomes = [Genome(), Genome.parse("f1=sqrt,beta=inv_col_sum"), Genome(3, 6, 3, 3)]

    def dense_forward() -> float:
        sync()
        start = time.perf_counter()
        with torch.no_grad():
            for i in range(0, ids.shape[0], engine.batch_size):
                model(ids[i : i + engine.batch_size].to(device), use_cache=False)
        sync()
        return time.perf_counter() - start

    def timed(fn, *fn_args) -> float:
        sync()
        start = time.perf_counter()
        fn(*fn_args)
        sync()
        return time.perf_counter() - start

    dense, cand, cached, child_t, apply_t, kl_new, kl_old = [], [], [], [], [], [], []
    ratio = pattern.sparsity if pattern.structured else 0.5
    changed = n_blocks // 3  # a child of two moved layers first changes a third of the way in
    kl_gap = 0.0
    for r in range(args.repeats):
        dense.append(dense_forward())
        c = Candidate(genomes[r % len(genomes)], (ratio,) * n_blocks)
        engine.clear_mask_cache()  # a new genome: masks and block outputs are new
        cand.append(timed(engine.evaluate, c))
        # a layer-wise-stage candidate: its per-layer masks are cached; its blocks are not kept
        engine._prefix.clear()
        cached.append(timed(engine.evaluate, c))
        # its child: one block changed (dense, or 0.05 sparser), the blocks before it kept
        plan = list(c.block_sparsity)
        plan[changed] = 0.0 if pattern.structured else ratio + 0.05
        child = Candidate(c.genome, tuple(plan))
        engine.evaluate(child)  # its masks cached, as a layer-wise stage's usually are
        engine._prefix.clear()
        engine.evaluate(c)  # the parent's blocks kept
        child_t.append(timed(engine.evaluate, child))
        engine.clear_mask_cache()
        apply_t.append(timed(engine.apply, c))
        # the error alone on the candidate's lm_head inputs: shifted logsumexp, and exact
        if args.objective == "kl":
            torch.set_grad_enabled(False)
            hidden = engine._final_hidden(engine.n_fitness)
            err = engine._error
            kl_new.append(timed(err._kl_fast, hidden))
            kl_old.append(timed(functools.partial(err._kl_fast, exact=True), hidden))
            kl_gap = max(kl_gap, abs(err._kl_fast(hidden) / err._kl_fast(hidden, exact=True) - 1))
        engine.restore()
    d, c, k, a = (statistics.median(x) for x in (dense, cand, cached, apply_t))
    ch = statistics.median(child_t)
    print(
        f"model {source}, {args.dtype} on {device} ({args.execution}), calibration {args.nsamples}x{args.seqlen}, "
        f"pattern {pattern}, {torch.get_num_threads()} threads, {args.repeats} alternating "
        "repeats (medians)"
    )
    print(f"engine setup (block inputs, dense statistics, dense reference): {setup:.2f}s")
    print(
        f"dense forward: {d:.2f}s; candidate evaluation: {c:.2f}s "
        f"(of which masking {a:.2f}s); ratio {c / d:.2f}"
    )
    print(f"candidate with cached masks (layer-wise stage): {k:.2f}s; ratio {k / d:.2f}")
    print(
        f"its child, block {changed} of {n_blocks} changed, the parent's blocks kept: "
        f"{ch:.2f}s; ratio {ch / d:.2f}"
    )
    if kl_new:
        kn, ko = statistics.median(kl_new), statistics.median(kl_old)
        print(
            f"KL on the lm_head inputs: shifted logsumexp {kn:.2f}s, torch.logsumexp {ko:.2f}s "
            f"(saves {ko - kn:.2f}s = {(ko - kn) / d:.1%} of a dense forward); largest "
            f"relative difference {kl_gap:.1e}"
        )
    if args.out:
        row = {
            "command": "bench/search_cost.py " + " ".join(sys.argv[1:]),
            "model": source,
            "pattern": str(pattern),
            "calibration": [args.nsamples, args.seqlen],
            "threads": torch.get_num_threads(),
            "repeats": args.repeats,
            "dense_forward_s": d,
            "new_genome_s": c,
            "masking_s": a,
            "cached_masks_s": k,
            "child_s": ch,
            "child_block": [changed, n_blocks],
            "kl_shifted_s": statistics.median(kl_new) if kl_new else None,
            "kl_exact_s": statistics.median(kl_old) if kl_old else None,
            "kl_relative_difference": kl_gap,
        }
        args.out.parent.mkdir(parents=True, exist_ok=True)
        rows = json.loads(args.out.read_text()) if args.out.exists() else []
        args.out.write_text(json.dumps([*rows, row], indent=1) + "\n")
    if args.profile:
        activities = [torch.profiler.ProfilerActivity.CPU]
        if device.type == "cuda":
            activities.append(torch.profiler.ProfilerActivity.CUDA)
        engine.clear_mask_cache()
        with torch.profiler.profile(activities=activities) as prof:
            engine.evaluate(Candidate(genomes[1], (ratio,) * n_blocks))
            sync()
        sort_by = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
        print(prof.key_averages().table(sort_by=sort_by, row_limit=15))


if __name__ == "__main__":
    main()
