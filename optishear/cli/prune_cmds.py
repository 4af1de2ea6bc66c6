"""`optishear prune` and `optishear compare`: one method at a time, by hand (eval: eval_cmd)."""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from optishear.artifacts.export import export_checkpoint
from optishear.cli.common import (
    add_dtype_flag,
    add_runtime_flags,
    ensure_assets,
    held_out,
    load_placed,
)
from optishear.cli.flags import add_config_flags, config_from_flags
from optishear.cli.progress import Bars
from optishear.config import CalibrationConfig, EvaluationConfig, PruneConfig
from optishear.core.errors import ConfigError
from optishear.core.settings import LibrarySettings
from optishear.data.text import sample_calibration
from optishear.model.hf import torch_device
from optishear.recipe.prune import PruneReport, prune_model

logger = logging.getLogger("optishear")

# The calibration seed is the only seed of a prune, so `--seed` names it too.
_CALIB_ALIASES = {"calibration.seed": ("--seed",)}


def _add_prune_flags(p: argparse.ArgumentParser, *, skip: tuple[str, ...] = ()) -> None:
    add_config_flags(p, PruneConfig, prefix="prune.", skip=skip)
    add_config_flags(p, CalibrationConfig, prefix="calibration.", aliases=_CALIB_ALIASES)
    add_config_flags(p, EvaluationConfig, prefix="evaluation.")


def register(sub: Any) -> None:
    prune = sub.add_parser("prune", help="prune a model, evaluate it and export a checkpoint")
    add_runtime_flags(prune)
    add_dtype_flag(prune)
    _add_prune_flags(prune)
    prune.add_argument("--no-eval", action="store_true", help="skip held-out perplexity")
    prune.add_argument("--out", type=Path, help="write the pruned checkpoint to this folder")
    prune.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    prune.add_argument("--json", action="store_true", help="print the report as JSON")
    prune.set_defaults(handler=run_prune)

    cmp_ = sub.add_parser("compare", help="prune with several methods and print a table")
    add_runtime_flags(cmp_)
    add_dtype_flag(cmp_)
    cmp_.add_argument(
        "--methods", default="magnitude,wanda", help="comma-separated pruning methods"
    )
    _add_prune_flags(cmp_, skip=("prune.method", "prune.genome", "prune.reconstruct"))
    cmp_.add_argument("--json", type=Path, help="also write the rows to this JSON file")
    cmp_.set_defaults(handler=run_compare)


def _configs(args: argparse.Namespace, **overrides: Any) -> tuple[
    PruneConfig, CalibrationConfig, EvaluationConfig
]:  # fmt: skip
    return (
        config_from_flags(PruneConfig, args, "prune.", **overrides),
        config_from_flags(CalibrationConfig, args, "calibration."),
        config_from_flags(EvaluationConfig, args, "evaluation."),
    )


def _load(
    args: argparse.Namespace, settings: LibrarySettings, device: torch.device | None = None
) -> Any:
    return load_placed(
        args.model,
        settings,
        device=device or torch_device(args.device),
        dtype=args.dtype,
        execution=args.execution,
    )


def run_prune(args: argparse.Namespace, settings: LibrarySettings, bars: Bars) -> int:
    config, calib_cfg, eval_cfg = _configs(args)
    out: Path | None = args.out
    if out is not None and out.exists() and any(out.iterdir()) and not args.overwrite:
        raise ConfigError(f"{out} exists and is not empty; pass --overwrite to replace it")
    device = torch_device(args.device)  # a bad device is refused before any download
    ensure_assets(settings, bars, args.model, calib_cfg.source, eval_cfg.text)
    model, tokenizer, source, streamer = _load(args, settings, device)
    calib = sample_calibration(tokenizer, calib_cfg, settings)
    report = prune_model(model, calib, config, progress=bars.steps)
    result: dict[str, Any] = {
        "model": args.model,
        "execution": "resident" if streamer is None else "streaming",
        "prune": report.to_dict(),
        "calibration": calib_cfg.model_dump(mode="json"),
    }
    if not args.no_eval:
        result["eval"] = held_out(model, tokenizer, eval_cfg, settings).to_dict()
    if streamer is not None:
        streamer.close()  # the whole model on the host, for the export
    if out is not None:
        manifest = export_checkpoint(
            model,
            tokenizer,
            out,
            {"source_model": args.model, "source_kind": source.kind, **result},
            overwrite=args.overwrite,
        )
        result["checkpoint"] = {"path": str(out), "files": manifest["files"]}
    if args.json:
        print(json.dumps(result, indent=2, default=str))
    else:
        _print_prune_summary(report, result)
    return 0


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


def run_compare(args: argparse.Namespace, settings: LibrarySettings, bars: Bars) -> int:
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    configs = [_configs(args, method=m)[0] for m in methods]  # validate all before any work
    _, calib_cfg, eval_cfg = _configs(args)
    ensure_assets(settings, bars, args.model, calib_cfg.source, eval_cfg.text)
    model, tokenizer, _, _ = _load(args, settings)
    dense = {k: v.detach().clone() for k, v in model.state_dict().items()}
    calib = sample_calibration(tokenizer, calib_cfg, settings)
    ppl = held_out(model, tokenizer, eval_cfg, settings)
    rows = [
        {
            "method": "dense",
            "pattern": "-",
            "target": 0.0,
            "achieved": 0.0,
            "perplexity": ppl.perplexity,
            "seconds": 0.0,
        }
    ]
    for config in configs:
        model.load_state_dict(dense)
        report = prune_model(model, calib, config, progress=bars.steps)
        ppl = held_out(model, tokenizer, eval_cfg, settings)
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
        f"model {args.model}; calibration {calib_cfg.n_samples}x{calib_cfg.seq_len} tokens; "
        f"held-out perplexity over {ppl.n_tokens} tokens"
    )
    print(format_table(rows))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0
