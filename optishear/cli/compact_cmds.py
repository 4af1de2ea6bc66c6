"""`optishear pack` and `optishear unpack`: a pruned checkpoint as a compact archive and back."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from optishear.artifacts.compact import pack, pack_tar, read_header, unpack
from optishear.cli.progress import Bars
from optishear.core.errors import DataError
from optishear.core.settings import LibrarySettings

_MB = 1e6


def register(sub: Any) -> None:
    p = sub.add_parser(
        "pack",
        help="write an exported checkpoint (folder or .tar) as a compact archive",
        description="Store each mostly-zero tensor as a bitmask plus its surviving values; "
        "`optishear unpack` restores the folder bit for bit (docs/compact-format.md).",
    )
    p.add_argument("source", type=Path, metavar="FOLDER_OR_TAR", help="HF folder or its .tar")
    p.add_argument("--out", type=Path, required=True, help="archive file to write")
    p.set_defaults(handler=run_pack)

    u = sub.add_parser("unpack", help="restore the dense HF folder from a compact archive")
    u.add_argument("archive", type=Path)
    u.add_argument("--out", type=Path, required=True, help="folder to write")
    u.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    u.set_defaults(handler=run_unpack)


def run_pack(args: argparse.Namespace, _settings: LibrarySettings, bars: Bars) -> int:
    source: Path = args.source
    if source.is_dir():
        report = pack(source, args.out, progress=bars.bytes)
    elif source.is_file():
        report = pack_tar(source, args.out, progress=bars.bytes)
    else:
        raise DataError(f"{source} does not exist")
    print(
        f"packed {report.files} files ({report.packed_tensors} of {report.tensors} tensors as "
        f"bitmask + values) into {args.out}: {report.dense_bytes / _MB:.1f} MB -> "
        f"{report.compact_bytes / _MB:.1f} MB, ratio {report.ratio:.3f}, "
        f"{report.seconds:.1f} s"
    )
    return 0


def run_unpack(args: argparse.Namespace, _settings: LibrarySettings, bars: Bars) -> int:
    start = time.perf_counter()
    header = read_header(args.archive)
    folder = unpack(args.archive, args.out, overwrite=args.overwrite, progress=bars.bytes)
    dense = sum(e.bytes for e in header.files)
    compact = args.archive.stat().st_size
    print(
        f"unpacked {len(header.files)} files into {folder}, every sha256 checked: "
        f"{compact / _MB:.1f} MB -> {dense / _MB:.1f} MB (ratio {compact / max(dense, 1):.3f}), "
        f"{time.perf_counter() - start:.1f} s"
    )
    return 0
