"""`optishear speed`: prefill and decode latency of a model against its pruned copy."""

from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path
from typing import Any

from optishear.cli.common import add_dtype_flag, ensure_assets
from optishear.cli.flags import add_config_flags, config_body, config_from_flags
from optishear.cli.progress import Bars
from optishear.config import CalibrationConfig, PruneConfig
from optishear.core.errors import ConfigError
from optishear.core.settings import LibrarySettings
from optishear.data.text import sample_calibration
from optishear.evaluation.speed import (
    KERNELS,
    SpeedConfig,
    SpeedReport,
    check_fits,
    measure_speed,
    no_sparse_kernel_reason,
)
from optishear.model.hf import load_model, torch_device, torch_dtype
from optishear.model.sources import REGISTERED_MODELS, resolve_source
from optishear.recipe.prune import prune_model

_DEFAULTS = SpeedConfig()


def register(sub: Any) -> None:
    p = sub.add_parser(
        "speed",
        help="does the pruned model run faster? prefill and decode latency against the dense one",
        description="Times greedy generation with the KV cache (a prefill of --prompt-len tokens, "
        "then --decode-tokens steps) for the dense model and its pruned copy, alternating. "
        "The pruned copy is a --checkpoint folder, or --model pruned here with the prune flags.",
    )
    p.add_argument(
        "--model",
        required=True,
        help=f"the dense model: registered name ({', '.join(REGISTERED_MODELS)}), HF folder, "
        ".gguf file or hub id",
    )
    p.add_argument(
        "--checkpoint",
        type=Path,
        help="a pruned HF folder (written by `optishear prune --out`, or a service checkpoint "
        "unpacked); without it, --model is pruned here with the prune flags below",
    )
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    add_dtype_flag(p)
    p.add_argument(
        "--batch-sizes",
        default=",".join(map(str, _DEFAULTS.batch_sizes)),
        help="comma-separated batch sizes (default %(default)s)",
    )
    p.add_argument(
        "--prompt-len",
        type=int,
        default=_DEFAULTS.prompt_len,
        help="prompt tokens (default %(default)s)",
    )
    p.add_argument(
        "--decode-tokens",
        type=int,
        default=_DEFAULTS.decode_tokens,
        help="tokens generated (default %(default)s)",
    )
    p.add_argument(
        "--warmup",
        type=int,
        default=_DEFAULTS.warmup,
        help="untimed runs first (default %(default)s)",
    )
    p.add_argument(
        "--repeats",
        type=int,
        default=_DEFAULTS.repeats,
        help="timed runs (median) (default %(default)s)",
    )
    p.add_argument(
        "--kernel",
        choices=KERNELS,
        default=_DEFAULTS.kernel,
        help="auto: 2:4 semi-structured kernels where they apply (CUDA, float16/bfloat16), "
        "else dense; dense: always dense; semi_structured: fail where they cannot run",
    )
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    prune = p.add_argument_group("pruning on the fly (without --checkpoint)")
    add_config_flags(prune, PruneConfig, prefix="prune.")
    add_config_flags(prune, CalibrationConfig, prefix="calibration.")
    p.set_defaults(handler=run_speed)


def _batch_sizes(text: str) -> tuple[int, ...]:
    parts = [t.strip() for t in text.split(",") if t.strip()]
    try:
        return tuple(int(t) for t in parts)
    except ValueError:
        raise ConfigError(
            f"--batch-sizes takes comma-separated integers such as 1,8, got {text!r}"
        ) from None


def _speed_config(args: argparse.Namespace) -> SpeedConfig:
    return SpeedConfig(
        batch_sizes=_batch_sizes(args.batch_sizes),
        prompt_len=args.prompt_len,
        decode_tokens=args.decode_tokens,
        warmup=args.warmup,
        repeats=args.repeats,
        kernel=args.kernel,
    )


def run_speed(args: argparse.Namespace, settings: LibrarySettings, bars: Bars) -> int:
    config = _speed_config(args)
    device = torch_device(args.device)
    dtype = torch_dtype(args.dtype, device)
    if config.kernel == "semi_structured":
        why = no_sparse_kernel_reason(device, dtype)  # the pattern is checked once loaded
        if why is not None:
            raise ConfigError(f"--kernel semi_structured cannot run here: {why}")
    prune_flags = {**config_body(args, "prune."), **config_body(args, "calibration.")}
    if args.checkpoint is not None:
        if prune_flags:
            raise ConfigError(
                "--checkpoint is measured as it is: leave out the prune and calibration flags "
                f"({', '.join(sorted(prune_flags))})"
            )
        resolve_source(str(args.checkpoint), settings)  # a bad path fails before any load
        ensure_assets(settings, bars, args.model)
        dense, _, _ = load_model(args.model, settings=settings, device=device, dtype=dtype)
        check_fits(dense, config)
        pruned, _, _ = load_model(
            str(args.checkpoint), settings=settings, device=device, dtype=dtype
        )
        pruned_info: dict[str, Any] = {"checkpoint": str(args.checkpoint)}
    else:
        prune_cfg = config_from_flags(PruneConfig, args, "prune.")
        calib_cfg = config_from_flags(CalibrationConfig, args, "calibration.")
        ensure_assets(settings, bars, args.model, calib_cfg.source)
        dense, tokenizer, _ = load_model(args.model, settings=settings, device=device, dtype=dtype)
        check_fits(dense, config)
        pruned = copy.deepcopy(dense)
        calib = sample_calibration(tokenizer, calib_cfg, settings)
        report = prune_model(pruned, calib, prune_cfg, progress=bars.steps)
        print(
            f"pruned with {report.method}, {report.pattern}, {report.achieved:.4f} sparsity "
            f"in {report.seconds:.1f}s",
            file=sys.stderr,
        )
        pruned_info = {"prune": report.to_dict()}
    print(
        f"timing dense and pruned at batch sizes {','.join(map(str, config.batch_sizes))} "
        f"({config.prompt_len}-token prompt, {config.decode_tokens} decode steps, "
        f"{config.repeats} repeats)",
        file=sys.stderr,
    )
    speed = measure_speed(dense, pruned, config, device=device)
    if args.json:
        result = {"model": args.model, "pruned": pruned_info, "speed": speed.to_dict()}
        print(json.dumps(result, indent=2, default=str))
    else:
        print(format_report(speed))
    return 0


def format_report(report: SpeedReport) -> str:
    head = (
        f"{'variant':<8}{'kernel':<17}{'batch':>6}{'prefill ms':>12}{'prefill tok/s':>15}"
        f"{'decode ms/tok':>15}{'decode tok/s':>14}"
    )
    lines = [f"device {report.device}, {report.dtype}", head, "-" * len(head)]
    for r in report.rows:
        lines.append(
            f"{r.variant:<8}{r.kernel:<17}{r.batch_size:>6}{r.prefill_ms:>12.2f}"
            f"{r.prefill_tokens_per_s:>15.1f}{r.decode_ms_per_token:>15.3f}"
            f"{r.decode_tokens_per_s:>14.1f}"
        )
    lines.append("pruned/dense latency (above 1: the pruned model is slower):")
    for q in report.ratios():
        lines.append(
            f"  batch {q.batch_size}: prefill {q.prefill:.3f}x ({q.prefill_verdict}), "
            f"decode {q.decode:.3f}x ({q.decode_verdict})"
        )
    lines.append(f"kernels: {report.kernel_note}")
    return "\n".join(lines)
