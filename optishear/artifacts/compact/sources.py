"""What a pack reads: the files of a folder or of an uncompressed tar, one at a time, with
their paths checked (no absolute paths, no '..', no links out of the archive)."""

from __future__ import annotations

import tarfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO

from optishear.core.errors import DataError


@dataclass(frozen=True)
class Source:
    path: str  # relative, posix
    size: int
    open: Callable[[], IO[bytes]]


def safe_relpath(text: str, where: str) -> str:
    p = PurePosixPath(text)
    if (
        not text
        or "\\" in text
        or p.is_absolute()
        or any(part in ("", ".", "..") for part in text.split("/"))
    ):
        raise DataError(f"{where}: unsafe file path {text!r} (absolute, empty or with '..')")
    return p.as_posix()


def _sort_key(source: Source) -> tuple[str, ...]:
    return PurePosixPath(source.path).parts  # write_archive's order


def folder_sources(folder: Path) -> list[Source]:
    sources = []
    for p in folder.rglob("*"):
        if p.is_file():
            rel = p.relative_to(folder).as_posix()
            sources.append(Source(rel, p.stat().st_size, lambda p=p: p.open("rb")))
    return sorted(sources, key=_sort_key)


def tar_sources(tar: tarfile.TarFile, tar_path: Path) -> tuple[str, list[Source]]:
    roots = set()
    sources = []
    for member in tar.getmembers():
        name = member.name.rstrip("/")
        while name.startswith("./"):  # `tar -cf x.tar ./folder` names members so
            name = name[2:]
        if member.isdir() and name in ("", "."):
            continue
        name = safe_relpath(name, str(tar_path))
        root, _, rel = name.partition("/")
        roots.add(root)
        if member.isdir():
            continue
        if not member.isfile() or not rel:
            raise DataError(f"{tar_path}: member {member.name!r} is not a file in a folder")
        sources.append(Source(rel, member.size, lambda m=member: _extract(tar, m)))
    if len(roots) != 1:
        raise DataError(f"{tar_path}: expected one top-level folder, found {sorted(roots)}")
    if len({s.path for s in sources}) != len(sources):
        raise DataError(f"{tar_path}: a file appears twice in the tar")
    return roots.pop(), sorted(sources, key=_sort_key)


def _extract(tar: tarfile.TarFile, member: tarfile.TarInfo) -> IO[bytes]:
    f = tar.extractfile(member)
    if f is None:  # isfile() was checked; kept for the type checker
        raise DataError(f"cannot read {member.name!r} from the tar")
    return f
