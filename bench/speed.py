"""Does a Wanda-pruned model run faster? Dense against 50% unstructured and 2:4, as a table.

For each model, the dense model and a Wanda-pruned copy per pattern are timed with
`optishear.evaluation.speed.measure_speed` (greedy generation with the KV cache, repeats alternating
between the two models, medians), and one Markdown table is printed with the command that made
it. Only 2:4 on a CUDA GPU in float16/bfloat16 has a sparse kernel; everywhere else the pruned
model runs the dense kernels and the note says so.

    .venv/bin/python bench/speed.py --models smollm2-135m --batch-sizes 1,8 --prompt-len 128 \
        --decode-tokens 32 --device cpu

On a machine without the bundled weights (no network to fetch them), `--weights random` builds
the same architectures with random weights and prunes them on random calibration ids: the
timing depends on shapes and the pattern, not on weight values.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import json
import platform
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    LlamaConfig,
    PretrainedConfig,
    Qwen2Config,
)

from optishear.config import CalibrationConfig, PruneConfig
from optishear.core.errors import ModelSourceError
from optishear.core.settings import LibrarySettings
from optishear.data.text import sample_calibration
from optishear.evaluation.speed import SpeedConfig, SpeedReport, measure_speed, verdict
from optishear.model.hf import load_model, torch_device, torch_dtype
from optishear.model.sources import registered_model_dir
from optishear.recipe.prune import prune_model

# The bundled models' architectures (from their config.json), for --weights random on a machine
# that never fetched them.
_ARCHITECTURES: dict[str, PretrainedConfig] = {
    "smollm2-135m": LlamaConfig(
        vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
        num_attention_heads=9, num_key_value_heads=3, head_dim=64, max_position_embeddings=8192,
        tie_word_embeddings=True, rms_norm_eps=1e-5,
    ),
    "qwen2.5-0.5b": Qwen2Config(
        vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
        num_attention_heads=14, num_key_value_heads=2, max_position_embeddings=32768,
        tie_word_embeddings=False,
    ),
}  # fmt: skip


def _dense_model(
    name: str, weights: str, device: torch.device, dtype: torch.dtype, calib: CalibrationConfig
) -> tuple[nn.Module, torch.Tensor, str]:
    """(model, calibration ids, how it was made)."""
    settings = LibrarySettings()
    if weights != "random":
        try:
            model, tokenizer, _ = load_model(name, settings=settings, device=device, dtype=dtype)
        except ModelSourceError:
            if weights == "bundled":
                raise
            print(f"{name}: bundled weights not found; random weights instead", file=sys.stderr)
        else:
            return model, sample_calibration(tokenizer, calib, settings), "bundled weights"
    folder = registered_model_dir(name, settings) if name in _ARCHITECTURES else Path(name)
    if (folder / "config.json").is_file():
        config = AutoConfig.from_pretrained(folder)
    elif name in _ARCHITECTURES:
        config = _ARCHITECTURES[name]
    else:
        raise SystemExit(f"{name}: no config.json for random weights")
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=dtype).to(device).eval()
    gen = torch.Generator().manual_seed(calib.seed)
    ids = torch.randint(0, config.vocab_size, (calib.n_samples, calib.seq_len), generator=gen)
    return model, ids, "random weights, random calibration ids"


def _ratio(value: float) -> str:
    text = f"{value:.3f}x ({verdict(value)})"
    return f"**{text}**" if value > 1 else text


def markdown(results: list[dict[str, Any]], command: str, header: dict[str, str]) -> str:
    lines = [
        "## Speed: dense against Wanda-pruned",
        "",
        f"`{command}`",
        "",
        *(f"- {k}: {v}" for k, v in header.items()),
        "",
        (
            "Latency ratios are pruned over dense: above 1 (bold) the pruned model is slower. "
            "A decode step makes one token for every sequence of the batch."
        ),
        "",
        (
            "| model | pruned | variant | kernel | batch | prefill ms | prefill tok/s "
            "| decode ms/token | decode tok/s | prefill pruned/dense | decode pruned/dense |"
        ),
        "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    notes = []
    for res in results:
        report = SpeedReport.from_dict(res["speed"])
        ratios = {q.batch_size: q for q in report.ratios()}
        label = f"{res['method']} {res['achieved']:.0%} {res['pattern']}"
        for r in report.rows:
            q = ratios[r.batch_size] if r.variant == "pruned" else None
            lines.append(
                f"| {res['model']} | {label} | {r.variant} | {r.kernel} | {r.batch_size} "
                f"| {r.prefill_ms:.2f} | {r.prefill_tokens_per_s:.0f} "
                f"| {r.decode_ms_per_token:.3f} | {r.decode_tokens_per_s:.1f} "
                f"| {_ratio(q.prefill) if q else ''} | {_ratio(q.decode) if q else ''} |"
            )
        notes.append(f"- {res['model']}, {label} ({res['weights']}): {report.kernel_note}")
    return "\n".join([*lines, "", "Kernels:", "", *notes, ""])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="smollm2-135m", help="comma-separated")
    parser.add_argument("--patterns", default="unstructured,2:4", help="comma-separated")
    parser.add_argument("--sparsity", type=float, default=0.5, help="target for unstructured")
    parser.add_argument("--method", default="wanda")
    parser.add_argument("--weights", choices=("auto", "bundled", "random"), default="auto")
    parser.add_argument("--nsamples", type=int, default=16, help="calibration sequences")
    parser.add_argument("--seqlen", type=int, default=128, help="calibration tokens each")
    parser.add_argument("--batch-sizes", default="1,8")
    parser.add_argument("--prompt-len", type=int, default=128)
    parser.add_argument("--decode-tokens", type=int, default=32)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--kernel", default="auto", choices=("auto", "dense", "semi_structured"))
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default="float32")
    parser.add_argument("--out", type=Path, help="also write speed.json and speed.md here")
    args = parser.parse_args()
    command = shlex.join(["python", "bench/speed.py", *sys.argv[1:]])
    device, dtype = torch_device(args.device), torch_dtype(args.dtype)
    speed_cfg = SpeedConfig(
        batch_sizes=tuple(int(b) for b in args.batch_sizes.split(",")),
        prompt_len=args.prompt_len,
        decode_tokens=args.decode_tokens,
        warmup=args.warmup,
        repeats=args.repeats,
        kernel=args.kernel,
    )
    calib = CalibrationConfig(n_samples=args.nsamples, seq_len=args.seqlen)
    start = time.perf_counter()
    results: list[dict[str, Any]] = []
    for name in args.models.split(","):
        dense, ids, weights = _dense_model(name, args.weights, device, dtype, calib)
        for pattern in args.patterns.split(","):
            sparsity = None if pattern != "unstructured" else args.sparsity
            prune_cfg = PruneConfig(method=args.method, sparsity=sparsity, pattern=pattern)
            pruned = copy.deepcopy(dense)
            pruned_report = prune_model(pruned, ids, prune_cfg)
            print(
                f"{name}: {args.method} {pattern} at {pruned_report.achieved:.4f} in "
                f"{pruned_report.seconds:.1f}s; timing ...",
                file=sys.stderr,
            )
            speed = measure_speed(dense, pruned, speed_cfg, device=device)
            results.append(
                {
                    "model": name,
                    "weights": weights,
                    "method": args.method,
                    "pattern": pattern,
                    "achieved": pruned_report.achieved,
                    "speed": speed.to_dict(),
                }
            )
            del pruned
            if device.type == "cuda":
                torch.cuda.empty_cache()
        del dense
    header = {
        "device": results[0]["speed"]["device"] if results else str(device),
        "dtype": args.dtype,
        "torch": torch.__version__,
        "cuSPARSELt": str(torch.backends.cusparselt.is_available()),
        "host": f"{platform.node()}, {platform.processor() or platform.machine()}",
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "wall time": f"{time.perf_counter() - start:.0f} s",
    }
    text = markdown(results, command, header)
    print(text)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        payload = {"command": command, **header, "results": results}
        (args.out / "speed.json").write_text(json.dumps(payload, indent=2))
        (args.out / "speed.md").write_text(text)


if __name__ == "__main__":
    main()
