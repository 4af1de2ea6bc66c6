"""Throughput of the Ray workers: evaluations per second with 1 and 2 actors, and their memory.

Every actor holds its own model and runs one torch thread. The same distinct candidates are
evaluated in one process (one thread, no Ray) for reference, then on 1 and 2 actors; the
errors must agree exactly. Besides wall-clock rates, each actor's own CPU time is read before
and after the batch: on a machine shared with other jobs, CPU seconds per evaluation and the
share of a core each actor actually got tell contention apart from scaling.

Memory: each actor's resident set right after it started (its peak so far is the loading
peak) and after the batch, next to the model's weights, and the
resident set of a Ray worker that imported the same code but loaded no model.

    .venv/bin/python bench/workers_bench.py --model smollm2-135m --nsamples 8 --seqlen 128
    .venv/bin/python bench/workers_bench.py --dtype bfloat16 --json bench/results/workers_bf16.json
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import ray
import torch

from optishear.config import BUNDLED, CalibrationConfig, SearchConfig
from optishear.core.genome import N_GENOMES, Genome
from optishear.recipe.candidates import Candidate
from optishear.search.engine_spec import EngineSpec
from optishear.search.evaluator import InProcessEvaluator
from workers.actor import ActorUsage
from workers.pool import RayEvaluator
from workers.runtime import ray_runtime

MiB = 1 << 20


@ray.remote(num_cpus=1)
def runtime_only_rss() -> int:
    """VmRSS of a Ray worker that imported torch, transformers and the actor code, no model."""
    import workers.actor  # noqa: F401

    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def distinct_candidates(n: int, n_blocks: int, target: float, seed: int) -> list[Candidate]:
    """n candidates whose masks all differ (distinct row-canonical genomes), uniform plans."""
    rng = np.random.default_rng(seed)
    seen: set[int] = set()
    out = []
    while len(out) < n:
        g = Genome.from_index(int(rng.integers(N_GENOMES)))
        if g.row_canonical().index not in seen:
            seen.add(g.row_canonical().index)
            out.append(Candidate(g, (target,) * n_blocks))
    return out


def measure(spec: EngineSpec, n: int, warm: Candidate, cands: list[Candidate]) -> dict[str, Any]:
    start = time.perf_counter()
    with RayEvaluator(spec, n) as evaluator:
        startup = time.perf_counter() - start
        loaded = evaluator.actor_usage()
        evaluator.evaluate([warm] * n)  # one warm-up call per actor
        before = evaluator.actor_usage()
        start = time.perf_counter()
        errors = [e.error for e in evaluator.evaluate(cands)]
        seconds = time.perf_counter() - start
        after = evaluator.actor_usage()
        done = [i.evaluations - 1 for i in evaluator.actor_info()]  # less the warm-up
    cpu = [a.cpu_seconds - b.cpu_seconds for a, b in zip(after, before, strict=True)]

    def mib(usage: list[ActorUsage], field: str) -> list[float]:
        return [round((getattr(u, field) or 0) / MiB) for u in usage]

    return {
        "workers": n,
        "errors": errors,
        "startup_s": startup,
        "seconds": seconds,
        "evals_per_s": len(cands) / seconds,
        "evaluations_per_actor": done,
        "cpu_s_per_eval": sum(cpu) / len(cands),
        "core_share": sum(cpu) / (seconds * n),  # of the n cores the actors asked for
        "rss_after_load_mib": mib(loaded, "rss_bytes"),
        "peak_rss_load_mib": mib(loaded, "peak_rss_bytes"),
        "peak_rss_end_mib": mib(after, "peak_rss_bytes"),
        "model_mib": loaded[0].model_bytes / MiB,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--calib", default=BUNDLED)
    parser.add_argument("--nsamples", type=int, default=8)
    parser.add_argument("--seqlen", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--candidates", type=int, default=8)
    parser.add_argument("--workers", default="1,2")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    parser.add_argument("--json", type=Path, help="also write the numbers here")
    args = parser.parse_args()

    config = SearchConfig(
        model=args.model,
        calibration=CalibrationConfig(
            source=args.calib, n_samples=args.nsamples, seq_len=args.seqlen
        ),
        batch_size=args.batch_size,
        dtype=args.dtype,
        engine_stats="dense",  # the engine as before engine_stats existed: comparable figures
    )
    spec = EngineSpec(config)
    counts = [int(w) for w in args.workers.split(",")]
    loads = [os.getloadavg()[0]]
    print(
        f"model {args.model} ({args.dtype}), calibration {args.nsamples}x{args.seqlen}, fitness on all, "
        f"{args.candidates} distinct candidates per batch, 1 torch thread per evaluator; "
        f"{os.cpu_count()} cores"
    )

    # Reference: the same batch in this process, one thread, no Ray.
    torch.set_num_threads(1)
    engine = spec.build()
    cands = distinct_candidates(args.candidates, engine.n_blocks, 0.5, args.seed)
    warm = Candidate(Genome(), (0.5,) * engine.n_blocks)
    local = InProcessEvaluator(engine)
    local.evaluate([warm])
    cpu0, start = time.process_time(), time.perf_counter()
    expected = [e.error for e in local.evaluate(cands)]
    seconds = time.perf_counter() - start
    in_process = {
        "evals_per_s": len(cands) / seconds,
        "cpu_s_per_eval": (time.process_time() - cpu0) / len(cands),
        "core_share": (time.process_time() - cpu0) / seconds,
    }
    print(
        f"in process (no Ray): {in_process['evals_per_s']:.3f} evaluations/s, "
        f"{in_process['cpu_s_per_eval']:.2f} CPU s per evaluation, "
        f"{in_process['core_share']:.0%} of a core"
    )
    del engine, local
    gc.collect()

    rows = []
    with ray_runtime(num_cpus=max(counts)):
        runtime_mib = ray.get(runtime_only_rss.remote()) / MiB
        print(f"a Ray worker with the code imported and no model: {runtime_mib:.0f} MiB resident")
        for n in counts:
            loads.append(os.getloadavg()[0])
            row = measure(spec, n, warm, cands)
            assert row.pop("errors") == expected, "workers disagree with the in-process evaluator"
            rows.append(row)
            print(
                f"{n} actor(s): {row['evals_per_s']:.3f} evaluations/s ({row['seconds']:.1f}s "
                f"for the batch, split {row['evaluations_per_actor']}; start-up "
                f"{row['startup_s']:.1f}s); {row['cpu_s_per_eval']:.2f} CPU s per evaluation; "
                f"each actor got {row['core_share']:.0%} of a core"
            )
            print(
                f"    resident after loading {row['rss_after_load_mib']} MiB, peak while "
                f"loading {row['peak_rss_load_mib']} MiB, peak at the end "
                f"{row['peak_rss_end_mib']} MiB; model {row['model_mib']:.0f} MiB"
            )
    loads.append(os.getloadavg()[0])
    one = rows[0]
    for r in rows[1:]:
        n = r["workers"] / one["workers"]
        r["efficiency"] = r["evals_per_s"] / (one["evals_per_s"] * n)
        r["cpu_efficiency"] = one["cpu_s_per_eval"] / r["cpu_s_per_eval"]
        print(
            f"scaling efficiency at {r['workers']} actors: {r['efficiency']:.0%} by wall clock; "
            f"CPU seconds per evaluation {one['cpu_s_per_eval']:.2f} -> "
            f"{r['cpu_s_per_eval']:.2f} ({r['cpu_efficiency']:.0%} efficiency when every actor "
            "has its own core)"
        )
    print(
        f"load average (1 min) during the run: {', '.join(f'{x:.2f}' for x in loads)} "
        f"(median {statistics.median(loads):.2f}); results equal to the in-process ones"
    )
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "protocol": {
                        "command": " ".join(["python", *sys.argv]),
                        "dtype": args.dtype,
                        "calibration": [args.nsamples, args.seqlen],
                        "candidates": args.candidates,
                        "load_average": loads,
                    },
                    "in_process": in_process,
                    "runtime_only_mib": runtime_mib,
                    "rows": rows,
                },
                indent=2,
            )
        )


if __name__ == "__main__":
    main()
