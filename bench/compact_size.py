"""Compact archive size and speed on the bundled model, for each pruning pattern.

Prunes smollm2-135m with Wanda (50% unstructured, 2:4, 70% unstructured), exports each as the
service does (HF folder, then write_archive's tar), packs the tar with optishear.artifacts.compact, unpacks
it and checks every file bit for bit. Run from the repository root:
python bench/compact_size.py [--dtype bfloat16] [--out bench/out/compact_size.json]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from optishear.artifacts.compact import ITEMSIZE, BitmaskTensor, pack_tar, read_header, unpack
from optishear.artifacts.export import export_checkpoint, write_archive
from optishear.config import DTYPES, CalibrationConfig, PruneConfig
from optishear.core.files import sha256_file
from optishear.core.patterns import Pattern
from optishear.data.text import sample_calibration
from optishear.model.hf import load_model, torch_dtype
from optishear.recipe.prune import prune_model

MODEL = "smollm2-135m"
RUNS = (("50% unstructured", 0.5, Pattern()), ("2:4", 0.5, Pattern(2, 4)),
        ("70% unstructured", 0.7, Pattern()))  # fmt: skip
_START = time.perf_counter()


def log(msg: str) -> None:
    print(f"[{time.perf_counter() - _START:7.1f}s] {msg}", file=sys.stderr, flush=True)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dtype", choices=DTYPES, default="float32", help="weights as exported")
    p.add_argument("--nsamples", type=int, default=16, help="calibration sequences")
    p.add_argument("--seqlen", type=int, default=128, help="calibration sequence length")
    p.add_argument("--workdir", type=Path, help="scratch folder (default: a temporary one)")
    p.add_argument("--out", type=Path, help="write the rows as JSON here")
    return p.parse_args()


def same_files(a: Path, b: Path) -> bool:
    names = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    if names != sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file()):
        return False
    return all(sha256_file(a / n) == sha256_file(b / n) for n in names)


def pruned_layer_sizes(archive: Path) -> tuple[int, int]:
    """(dense bytes, stored bytes) of the tensors stored as bitmask + values."""
    dense = stored = 0
    for entry in read_header(archive).files:
        for part in entry.parts:
            if isinstance(part, BitmaskTensor):
                dense += ITEMSIZE[part.dtype] * math.prod(part.shape)
                stored += part.mask.length + part.values.length
    return dense, stored


def main() -> int:
    args = parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="compact-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    model, tokenizer, _ = load_model(MODEL, dtype=torch_dtype(args.dtype))
    calib = sample_calibration(
        tokenizer, CalibrationConfig(source="wiki", n_samples=args.nsamples, seq_len=args.seqlen)
    )
    dense_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    rows: list[dict[str, Any]] = []
    runs: list[tuple[str, float, Pattern | None]] = [("dense (unpruned)", 0.0, None), *RUNS]
    for label, sparsity, pattern in runs:
        model.load_state_dict(dense_state)
        if pattern is not None:
            log(f"pruning {label} ...")
            prune_model(
                model, calib, PruneConfig(method="wanda", sparsity=sparsity, pattern=pattern)
            )
        folder = work / "ckpt"
        export_checkpoint(model, tokenizer, folder, {"bench": label}, overwrite=True)
        tar = work / "ckpt.tar"
        _, tar_bytes = write_archive(folder, tar)
        archive = work / "ckpt.oshc"
        log(f"packing {label} ...")
        report = pack_tar(tar, archive)
        restored = work / "restored"
        start = time.perf_counter()
        unpack(archive, restored, overwrite=True)
        unpack_s = time.perf_counter() - start
        layers_dense, layers_stored = pruned_layer_sizes(archive)
        row = {
            "pattern": label,
            "tar_bytes": tar_bytes,
            **report.to_dict(),
            "unpack_seconds": unpack_s,
            "bit_for_bit": same_files(folder, restored),
            "pruned_layers_dense_bytes": layers_dense,
            "pruned_layers_stored_bytes": layers_stored,
        }
        rows.append(row)
        log(f"{label}: {report.compact_bytes} / {tar_bytes} bytes, ratio {report.ratio:.3f}")
        shutil.rmtree(restored)
    if args.workdir is None:
        shutil.rmtree(work)

    print(f"Command: {shlex.join([os.path.relpath(sys.executable), *sys.argv])}\n")
    print(
        f"Model {MODEL} ({args.dtype}), Wanda, calibration {args.nsamples}x{args.seqlen}; "
        "ratio = compact / tar bytes; pruned layers = the tensors stored as bitmask + values\n"
    )
    print(
        "| pattern | dense archive (tar) bytes | compact bytes | ratio | pruned layers ratio "
        "| tensors packed | pack s | unpack s | bit for bit |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        layers = (
            f"{r['pruned_layers_stored_bytes'] / r['pruned_layers_dense_bytes']:.3f}"
            if r["pruned_layers_dense_bytes"]
            else "-"
        )
        print(
            f"| {r['pattern']} | {r['tar_bytes']:,} | {r['compact_bytes']:,} "
            f"| {r['compact_bytes'] / r['tar_bytes']:.3f} | {layers} "
            f"| {r['packed_tensors']}/{r['tensors']} | {r['seconds']:.1f} "
            f"| {r['unpack_seconds']:.1f} | {'yes' if r['bit_for_bit'] else 'NO'} |"
        )
    print(f"\nTotal time: {time.perf_counter() - _START:.0f} s")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"argv": sys.argv, "rows": rows}, indent=2) + "\n")
    return 0 if all(r["bit_for_bit"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
