"""`optishear search`: the NSGA-III search in this process or on Ray actors, without a database."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
from collections.abc import Callable
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

from tqdm import tqdm

from optishear.artifacts.export import export_checkpoint
from optishear.cli.common import add_execution_flag, ensure_assets, held_out, load_placed
from optishear.cli.flags import add_config_flags, config_from_flags
from optishear.cli.progress import Bars
from optishear.config import SearchConfig
from optishear.core.errors import ConfigError
from optishear.core.settings import LibrarySettings
from optishear.data.text import sample_calibration
from optishear.evaluation.held_out import manifest_comparison
from optishear.model.hf import torch_device
from optishear.recipe.comparison import held_out_ids
from optishear.recipe.prune import prune_model

logger = logging.getLogger("optishear")

EVALUATOR_PLUGINS = "optishear.evaluators"  # entry-point group; the workers package adds "ray"
STATE_FILE = "state.json"


def register(sub: Any) -> None:
    p = sub.add_parser("search", help="NSGA-III search for the metric and per-block plan")
    add_config_flags(p, SearchConfig)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    add_execution_flag(p)
    p.add_argument("--out", type=Path, required=True, help="folder for results and state")
    p.add_argument("--resume", action="store_true", help="continue the search in --out")
    p.add_argument(
        "--export",
        action="store_true",
        help="also write the recommended pruned checkpoint to OUT/checkpoint",
    )
    p.add_argument("--no-eval", action="store_true", help="skip held-out perplexity")
    p.add_argument(
        "--workers",
        type=int,
        default=None,
        help="evaluate candidates on N Ray actors, one model each (default: in this process; "
        "with --ray-address, as many as the cluster holds, one per GPU where it has GPUs)",
    )
    p.add_argument(
        "--ray-address",
        default=None,
        help="join this Ray cluster (also RAY_ADDRESS) instead of starting Ray locally",
    )
    p.set_defaults(handler=run)


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


def run(args: argparse.Namespace, settings: LibrarySettings, bars: Bars) -> int:
    from optishear.search.engine_spec import EngineSpec, engine_for, search_validation
    from optishear.search.evaluator import InProcessEvaluator
    from optishear.search.loop import run_search

    config = config_from_flags(SearchConfig, args)
    if args.workers is not None and args.workers < 1:
        raise ConfigError(f"--workers must be >= 1, got {args.workers}")
    out: Path = args.out
    state_path = out / STATE_FILE
    if (out / "state.pkl").exists() and not state_path.exists():
        raise ConfigError(
            f"{out} holds a search saved in the old pickle state format, which OptiShear no "
            "longer loads (loading it could run code): start the search again in another folder"
        )
    if state_path.exists() and not args.resume:
        raise ConfigError(
            f"{out} holds a search already: pass --resume to continue it, or choose another folder"
        )
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{out} is not a folder")
    use_ray = (args.workers or 1) > 1 or args.ray_address is not None
    plugin = _evaluator_plugin("ray") if use_ray else None
    device = torch_device(args.device)
    ensure_assets(settings, bars, config.model, config.calibration.source, config.evaluation.text)
    model, tokenizer, source, streamer = load_placed(
        config.model, settings, device=device, dtype=config.dtype, execution=args.execution
    )
    calib = sample_calibration(tokenizer, config.calibration, settings)
    valid = search_validation(tokenizer, config, settings)  # scores candidates; never fits
    eval_ids = (
        held_out_ids(tokenizer, config.evaluation, settings) if config.compare_baselines else None
    )
    out.mkdir(parents=True, exist_ok=True)
    evaluator: contextlib.AbstractContextManager[Any]
    if plugin is not None:  # each actor loads its own model; only the calibration ids travel
        spec = EngineSpec(config, folder=str(out.resolve()), execution=args.execution)
        evaluator = plugin(
            spec, workers=args.workers, address=args.ray_address, calib_ids=calib, valid_ids=valid
        )
    else:
        engine = engine_for(model, calib, config, folder=out, valid_ids=valid)
        evaluator = contextlib.closing(InProcessEvaluator(engine))
    bar = tqdm(
        total=config.total_generations(), desc="search", unit="gen", disable=not bars.enabled
    )

    def show(p: Any) -> None:
        bar.update(p.done - bar.n)
        bar.set_postfix(
            stage=p.stage, best=f"{p.best_error:.4f}", evals=p.evaluations, eta=f"{p.eta:.0f}s"
        )
        step = "screen rung" if p.generation < 0 else "generation"
        logger.info(
            "stage %s %s %d/%d: best error %.5f, %d evaluations, %d cache hits",
            p.stage,
            step,
            p.generation,
            p.n_generations,
            p.best_error,
            p.evaluations,
            p.cache_hits,
        )

    with evaluator as batch_evaluator:
        result = run_search(
            batch_evaluator,
            config,
            state_path=state_path,
            resume=args.resume,
            progress=show,
            held_out_ids=eval_ids,
        )
    bar.close()
    report = result.to_dict()
    rec = result.recommended
    # The recommended model is made by the recipe that scored it (optishear.search.finish).
    # With --baselines the comparison has pruned it and measured it on the held-out windows:
    # that is the figure, not a second prune and forward.
    assert result.recipe is not None
    recipe = result.recipe.model_dump(mode="json")
    compared = result.held_out.searched_eval(recipe) if result.held_out is not None else None
    if compared is not None and not args.no_eval:
        report["recommended_eval"] = compared
    if (not args.no_eval and compared is None) or args.export:
        pruned = prune_model(model, calib, result.recipe, progress=bars.steps)
        report["recommended_prune"] = pruned.to_dict()
        if not args.no_eval and compared is None:
            ppl = held_out(model, tokenizer, config.evaluation, settings)
            report["recommended_eval"] = ppl.to_dict()
        if args.export:
            if streamer is not None:
                streamer.close()  # the whole model on the host, for the export
            manifest = export_checkpoint(
                model,
                tokenizer,
                out / "checkpoint",
                {
                    "source_model": config.model,
                    "source_kind": source.kind,
                    "search": {k: report[k] for k in ("config", "recommended")},
                    "prune": pruned.to_dict(),
                    "eval": report.get("recommended_eval"),
                    "held_out_comparison": manifest_comparison(result.held_out),
                },
                overwrite=True,
            )
            report["checkpoint"] = {"path": str(out / "checkpoint"), "files": manifest["files"]}
    (out / "search.json").write_text(json.dumps(report, indent=2, default=str))
    (out / "recommended.json").write_text(json.dumps(report["recommended"], indent=2))
    print(
        f"search done: {result.evaluations} evaluations, {result.cache_hits} cache hits, "
        f"{result.seconds:.0f}s; front of {len(result.front)}"
    )
    if result.fallback:
        print(f"warning: {result.fallback}")
    what = rec.name if rec.method is not None else rec.candidate.genome.formula()
    print(
        f"recommended: {what}; per-block sparsity "
        f"{', '.join(f'{x:.2f}' for x in rec.candidate.block_sparsity)}; reconstruction error "
        f"{rec.evaluation.error:.5f}"
    )
    if "recommended_eval" in report:
        print(f"held-out perplexity {report['recommended_eval']['perplexity']:.3f}")
    if result.held_out is not None:
        print("held-out perplexity beside the baselines (same target, calibration, windows):")
        print("\n".join(result.held_out.lines()))
    print(f"results in {out / 'search.json'}")
    return 0
