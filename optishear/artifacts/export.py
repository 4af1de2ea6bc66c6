"""Write a pruned model as a standard HF folder (dense safetensors) with a manifest."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path
from typing import Any

from torch import nn
from transformers import PreTrainedTokenizerBase

from optishear import __version__
from optishear.core.errors import ConfigError
from optishear.core.files import sha256_file, staged_folder
from optishear.model.blocks import iter_linears

MANIFEST_NAME = "optishear_manifest.json"


def measured_sparsity(model: nn.Module) -> dict[str, Any]:
    """Share of exact zeros in the prunable weights, overall and per block."""
    per_block: dict[int, list[int]] = {}
    for idx, _name, lin in iter_linears(model):
        zeros, total = per_block.setdefault(idx, [0, 0])
        per_block[idx] = [zeros + int((lin.weight == 0).sum()), total + lin.weight.numel()]
    zeros = sum(z for z, _ in per_block.values())
    total = sum(t for _, t in per_block.values())
    return {
        "overall": zeros / total if total else 0.0,
        "per_block": [z / t for z, t in (per_block[i] for i in sorted(per_block))],
        "prunable_weights": total,
    }


def export_checkpoint(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase | None,
    out_dir: Path,
    info: dict[str, Any],
    *,
    max_shard_size: str = "2GB",
    overwrite: bool = False,
) -> dict[str, Any]:
    """Save model, tokenizer and `optishear_manifest.json`; returns the manifest.

    Weights are dense safetensors (serving stacks reject on-disk sparse formats). The folder is
    written beside its destination and renamed into place, so a crash leaves no half checkpoint.
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()) and not overwrite:
        raise ConfigError(f"{out_dir} exists and is not empty; choose another folder or overwrite")
    with staged_folder(out_dir) as tmp:
        model.save_pretrained(tmp, max_shard_size=max_shard_size)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        manifest = {
            "optishear_version": __version__,
            **info,
            "measured_sparsity": measured_sparsity(model),
            "files": {
                p.relative_to(tmp).as_posix(): {"sha256": sha256_file(p), "bytes": p.stat().st_size}
                for p in sorted(tmp.rglob("*"))
                if p.is_file()
            },
        }
        (tmp / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2, default=str))
    return manifest


def write_archive(folder: Path, dest: Path) -> tuple[str, int]:
    """Tar `folder` (as its top-level entry) into `dest`; returns (sha256, bytes).

    Plain tar: safetensors barely compress. The bytes depend only on the folder's name and its
    files' names and contents (sorted members, mtime 0, owner root, fixed modes), so the same
    pruned weights always give the same sha256.
    """
    folder = Path(folder)

    def fixed(info: tarfile.TarInfo) -> tarfile.TarInfo:
        info.mtime = 0
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        info.mode = 0o755 if info.isdir() else 0o644
        return info

    members = [folder, *sorted(folder.rglob("*"), key=lambda p: p.relative_to(folder).parts)]
    with tarfile.open(dest, "w", format=tarfile.PAX_FORMAT) as tar:
        for path in members:
            arcname = Path(folder.name, path.relative_to(folder)).as_posix()
            tar.add(path, arcname=arcname, recursive=False, filter=fixed)
    return sha256_file(dest), dest.stat().st_size
