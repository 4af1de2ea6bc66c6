"""Where memory goes: peak resident memory of prune, search set-up and one search actor,
against the model's weight bytes, with the fitness engine's resident tensors itemised.

Each phase runs in a fresh process (`--phase`), so that its peaks are its own. Resident
memory is split as the kernel counts it: anonymous (what the process allocated) and file
pages (weights memory-mapped from safetensors: clean, shared, and evictable under pressure;
transformers maps a checkpoint whose dtype it keeps). A sampling thread records both peaks.
- load:   the model alone (the floor every phase starts from);
- prune:  `--prune-method` (Wanda by default; sparsegpt; wanda+refit: Wanda's mask with the
          least-squares refit) at 50% or the `--pattern` through `prune_model`, as `optishear
          prune` runs it, with its wall time: `--nsamples 128 --seqlen 2048` is the field's
          calibration;
- engine: a FitnessEngine's set-up (dense statistics, baseline statistics, reference) and
          three candidate evaluations, as a search actor holds it;
- search: a small in-process search: four candidates scored, the best pruned as shipped, and
          its held-out perplexity (64 windows of 512 tokens).
`--model gemma3-270m` is a random-weight model of Gemma 3 270M's shape (a 262k vocabulary).

    .venv/bin/python bench/memory_profile.py --model smollm2-135m
    .venv/bin/python bench/memory_profile.py --model qwen2.5-0.5b --phases load,prune,engine
    .venv/bin/python bench/memory_profile.py --model gemma3-270m --phases load,prune,engine,search
    .venv/bin/python bench/memory_profile.py --phases prune --pattern 2:4 --nsamples 128 \
        --seqlen 2048 --prune-method wanda+refit --refit-holdout 8 --eval-windows 32 \
        --out bench/results/memory_128x2048_wanda+refit.json
`--refit-holdout N` holds every Nth sequence aside to choose the refit's damping;
`--eval-windows N` measures held-out perplexity after the prune (its peak is reported apart).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import torch
from torch import Tensor


def _rss_peak_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


def _rss_now_bytes() -> int:
    return int(Path("/proc/self/statm").read_text().split()[1]) * resource.getpagesize()


def _status_bytes(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    return 0


class PeakSampler:
    """Peaks of RssAnon and RssFile, sampled every few milliseconds in a thread."""

    def __init__(self, every: float = 0.005) -> None:
        self.every = every
        self.anon = self.file = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.anon = max(self.anon, _status_bytes("RssAnon"))
            self.file = max(self.file, _status_bytes("RssFile"))
            self._stop.wait(self.every)

    def start(self) -> PeakSampler:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        self._run_once()

    def _run_once(self) -> None:
        self.anon = max(self.anon, _status_bytes("RssAnon"))
        self.file = max(self.file, _status_bytes("RssFile"))


def _weight_bytes(model: torch.nn.Module) -> int:
    seen: set[int] = set()
    total = 0
    for p in model.parameters():  # tied embeddings once
        if p.data_ptr() not in seen:
            seen.add(p.data_ptr())
            total += p.numel() * p.element_size()
    return total


def _bytes(x: Any) -> int:
    if isinstance(x, Tensor):
        return x.numel() * x.element_size()
    if isinstance(x, list | tuple):
        return sum(_bytes(t) for t in x)
    return 0


def engine_inventory(engine: Any) -> dict[str, int]:
    """The engine's own resident tensors, by what they hold."""
    return {
        "scoring statistics (act_sq)": _bytes(engine._act_stacks),
        "second-order rho": _bytes(engine._rho_stacks),
        "reference lm_head inputs": _bytes(engine.reference),
        "KL terms (u, c)": _bytes(engine._error.kl_terms),
        "lm_head Gram matrix": _bytes(engine._error.gram),
        "mask cache": int(engine._masker.cache.bytes),
        "calibration ids": _bytes(engine.calib_ids),
    }


# Random-weight models built from a config, for shapes no registry package ships. gemma3-270m
# is Gemma 3 270M's shape: 268M parameters, 170M of them in a 262,144-token embedding (tied).
RANDOM_MODELS = ("gemma3-270m",)


def _seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def random_model(name: str, dtype: torch.dtype) -> torch.nn.Module:
    from transformers import AutoModelForCausalLM, Gemma3TextConfig

    assert name == "gemma3-270m"
    config = Gemma3TextConfig(
        vocab_size=262_144,
        hidden_size=640,
        intermediate_size=2048,
        num_hidden_layers=18,
        num_attention_heads=4,
        num_key_value_heads=1,
        head_dim=256,
        sliding_window=512,
        max_position_embeddings=32_768,
        tie_word_embeddings=True,
        use_cache=False,
    )
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config, dtype=dtype).eval()


def run_phase(args: argparse.Namespace) -> dict[str, Any]:
    from optishear.config import CalibrationConfig, EvaluationConfig, PruneConfig
    from optishear.core.genome import Genome
    from optishear.core.patterns import Pattern
    from optishear.data.text import evaluation_stream, sample_calibration
    from optishear.evaluation.perplexity import perplexity
    from optishear.model.hf import load_model
    from optishear.recipe.prune import prune_model
    from optishear.recipe.shipped import prune_candidate
    from optishear.search.fitness import Candidate, FitnessEngine

    torch.set_grad_enabled(False)
    imports = _rss_now_bytes()  # the interpreter, torch and transformers: no model yet
    anon_imports = _status_bytes("RssAnon")
    sampler = PeakSampler().start()
    if args.model in RANDOM_MODELS:
        model = random_model(args.model, getattr(torch, args.dtype))
        vocab = model.config.vocab_size
        calib = torch.randint(0, vocab, (args.nsamples, args.seqlen), generator=_seeded(0))
        held_out = torch.randint(0, vocab, (64 * 512,), generator=_seeded(1))
    else:
        model, tokenizer, _ = load_model(args.model, dtype=getattr(torch, args.dtype))
        calib = sample_calibration(
            tokenizer, CalibrationConfig(n_samples=args.nsamples, seq_len=args.seqlen)
        )
        held_out = evaluation_stream(tokenizer, EvaluationConfig())
    weights = _weight_bytes(model)
    after_load = _rss_peak_bytes()
    out: dict[str, Any] = {"phase": args.phase, "model": args.model, "dtype": args.dtype}
    if args.phase == "prune":
        method = args.prune_method
        config = PruneConfig(
            method=method.removesuffix("+refit"),
            sparsity=0.5,
            pattern=Pattern.parse(args.pattern),
            reconstruct=method.endswith("+refit"),
            refit_holdout=args.refit_holdout if method.endswith("+refit") else 0,
            batch_size=args.batch_size,
            hidden_memory_gib=args.hidden_memory_gib,
        )
        report = prune_model(model, calib, config)
        out |= {
            "prune_method": method,
            "pattern": args.pattern,
            "calibration": [args.nsamples, args.seqlen],
            "refit_holdout": config.refit_holdout,
            "batch_size": args.batch_size,
            "hidden_memory_gib": args.hidden_memory_gib,
            "prune_seconds": round(report.seconds, 1),
            # the prune's own peaks, before the held-out windows' logits add theirs
            "rss_peak_prune": _rss_peak_bytes(),
            "anon_peak_prune": sampler.anon,
        }
        if args.eval_windows:
            eval_cfg = EvaluationConfig(windows=args.eval_windows, batch_size=4)
            out["perplexity"] = perplexity(model, held_out, eval_cfg).perplexity
            out["eval_windows"] = args.eval_windows
    elif args.phase == "engine":
        pattern = Pattern.parse(args.pattern)
        engine = FitnessEngine(
            model,
            calib,
            pattern,
            sparsity=0.5,
            fitness_samples=args.fitness_samples,
            stats="baseline",
            second_order=args.second_order,
        )
        ratio = pattern.sparsity if pattern.structured else 0.5
        for genome in (Genome(), Genome.parse("f1=sqrt,beta=inv_col_sum"), Genome(3, 6, 3, 3)):
            engine.evaluate(Candidate(genome, (ratio,) * engine.n_blocks))
        out["engine"] = engine_inventory(engine)
    elif args.phase == "search":
        # A small in-process search as `optishear search` runs it: a population of four scored,
        # then the recommended candidate pruned as shipped and its held-out perplexity.
        pattern = Pattern.parse(args.pattern)
        ratio = pattern.sparsity if pattern.structured else 0.5
        engine = FitnessEngine(
            model, calib, pattern, sparsity=0.5, fitness_samples=args.fitness_samples
        )
        genomes = (Genome(), Genome.parse("f1=sqrt,beta=inv_col_sum"), Genome(3, 6, 3, 3))
        errors = [
            engine.evaluate(Candidate(g, (ratio,) * engine.n_blocks)).error
            for g in (*genomes, Genome.parse("alpha=inv_col_sum"))
        ]
        engine.close()
        best = genomes[min(range(len(genomes)), key=errors.__getitem__)]
        prune_candidate(model, calib, Candidate(best, (ratio,) * engine.n_blocks), pattern)
        out["perplexity"] = perplexity(model, held_out, EvaluationConfig()).perplexity
    peak = _rss_peak_bytes()
    out["anon_at_end"] = _status_bytes("RssAnon")  # what stays: the phase's steady state
    sampler.stop()
    out |= {
        "anon_imports": anon_imports,
        "anon_peak": sampler.anon,
        "file_peak": sampler.file,
        # what the phase allocated itself, above the bare interpreter and its libraries
        "anon_less_imports_over_weights": round((sampler.anon - anon_imports) / weights, 2),
        "weight_bytes": weights,
        "rss_imports": imports,
        "rss_after_load": after_load,
        "rss_peak": peak,
        "peak_over_weights": round(peak / weights, 2),
        # what the phase itself holds: the peak above the bare interpreter with its libraries
        "peak_less_imports_over_weights": round((peak - imports) / weights, 2),
    }
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    p.add_argument("--phases", default="load,prune,engine")
    p.add_argument("--phase", default=None, help=argparse.SUPPRESS)  # one, in this process
    p.add_argument("--pattern", default="unstructured")
    p.add_argument("--nsamples", type=int, default=32)
    p.add_argument("--seqlen", type=int, default=256)
    p.add_argument("--fitness-samples", type=int, default=8)
    p.add_argument("--prune-method", default="wanda", choices=("wanda", "sparsegpt", "wanda+refit"))
    p.add_argument("--out", type=Path, help="also write the phases' results as JSON here")
    p.add_argument(
        "--refit-holdout",
        type=int,
        default=0,
        help="wanda+refit: every Nth calibration sequence chooses the refit's damping (0: fixed)",
    )
    p.add_argument("--batch-size", type=int, default=8, help="prune: sequences per forward")
    p.add_argument(
        "--hidden-memory-gib",
        type=float,
        default=1.0,
        help="prune: the hidden states' memory budget; past it they go to a file (0: always)",
    )
    p.add_argument(
        "--eval-windows", type=int, default=0, help="prune: held-out 512-token windows after it"
    )
    p.add_argument(
        "--second-order",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="the engine keeps each layer's rho, as a default (second-order) search's does",
    )
    args = p.parse_args()
    if args.phase:
        print(json.dumps(run_phase(args)))
        return
    results = []
    for phase in args.phases.split(","):
        argv = [
            f"--{k.replace('_', '-')}={v}"
            for k, v in vars(args).items()
            if k not in ("phases", "phase", "second_order", "out")
        ]
        done = subprocess.run(
            [
                sys.executable,
                __file__,
                *argv,
                "--second-order" if args.second_order else "--no-second-order",
                f"--phase={phase}",
            ],
            check=True,
            capture_output=True,
            text=True,
        )
        line = done.stdout.strip().splitlines()[-1]
        print(line, flush=True)
        results.append(json.loads(line))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        command = " ".join(["python", *sys.argv])
        args.out.write_text(json.dumps({"command": command, "phases": results}, indent=2))


if __name__ == "__main__":
    main()
