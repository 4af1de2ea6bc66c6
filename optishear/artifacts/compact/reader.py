"""Reading an archive back: the header checked before a byte is written, each file restored
bit for bit and checked against its sha256, the folder published whole or not at all."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path, PurePosixPath
from typing import IO, Any

import numpy as np
from pydantic import ValidationError

from optishear import __version__
from optishear.artifacts.compact.layout import (
    CHUNK_ELEMENTS,
    COPY_BYTES,
    END_MAGIC,
    ITEMSIZE,
    MAGIC,
    PREAMBLE,
    TRAILER,
    UINT,
    VERSION,
    ArchiveHeader,
    BitmaskTensor,
    ByteProgress,
    FileEntry,
    Span,
    elements,
    output_length,
)
from optishear.artifacts.compact.sources import safe_relpath
from optishear.core.errors import ConfigError, DataError
from optishear.core.files import staged_folder


def read_header(archive: Path) -> ArchiveHeader:
    """The archive's checked header (the index of its files, parts and tensors)."""
    with Path(archive).open("rb") as f:
        return _read_header(f, Path(archive))


def _read_header(f: IO[bytes], archive: Path) -> ArchiveHeader:
    size = os.fstat(f.fileno()).st_size
    head = f.read(PREAMBLE.size)
    if head[:8] != MAGIC[: len(head)] or not head:
        hint = " (it is a tar: extract it with tar)" if _looks_like_tar(f) else ""
        raise DataError(f"{archive} is not an OptiShear compact archive{hint}")
    if len(head) < PREAMBLE.size:
        raise DataError(f"{archive} is truncated ({size} bytes)")
    _, version, _ = PREAMBLE.unpack(head)
    _check_version(version, archive)
    if size < PREAMBLE.size + TRAILER.size:
        raise DataError(f"{archive} is truncated ({size} bytes)")
    f.seek(size - TRAILER.size)
    index_offset, index_len, index_sha, end = TRAILER.unpack(f.read(TRAILER.size))
    if end != END_MAGIC:
        raise DataError(f"{archive} is truncated or corrupt (no end marker)")
    if not PREAMBLE.size <= index_offset <= size - TRAILER.size - index_len:
        raise DataError(f"{archive} is corrupt (header at {index_offset}+{index_len})")
    f.seek(index_offset)
    index = f.read(index_len)
    if hashlib.sha256(index).digest() != index_sha:
        raise DataError(f"{archive} is corrupt (header checksum mismatch)")
    try:
        raw = json.loads(index)
        if isinstance(raw, dict):
            _check_version(raw.get("version"), archive)
        header = ArchiveHeader.model_validate(raw)
    except (UnicodeDecodeError, json.JSONDecodeError, ValidationError) as exc:
        raise DataError(f"{archive}: invalid header: {exc}") from None
    if header.version != version:
        raise DataError(f"{archive}: header version {header.version} != preamble {version}")
    _check_layout(header, archive, data_end=index_offset)
    return header


def _looks_like_tar(f: IO[bytes]) -> bool:
    f.seek(257)
    return f.read(5) == b"ustar"


def _check_version(version: Any, archive: Path) -> None:
    if type(version) is not int or version < 1:
        raise DataError(f"{archive}: unknown format version {version!r}")
    if version > VERSION:
        raise DataError(
            f"{archive} uses compact format version {version}; this OptiShear "
            f"({__version__}) reads version {VERSION} or older: upgrade optishear to unpack it"
        )


def _check_layout(header: ArchiveHeader, archive: Path, *, data_end: int) -> None:
    """Every span inside the data area, sizes consistent with dtypes and shapes, safe paths."""
    paths: set[str] = set()
    for entry in header.files:
        path = safe_relpath(entry.path, str(archive))
        if path in paths:
            raise DataError(f"{archive}: file {path!r} is listed twice")
        paths.add(path)
        for part in entry.parts:
            spans = [part.mask, part.values] if isinstance(part, BitmaskTensor) else [part.data]
            for span in spans:
                if not PREAMBLE.size <= span.offset <= data_end - span.length:
                    raise DataError(f"{archive}: {path}: a part lies outside the data area")
            if isinstance(part, BitmaskTensor):
                itemsize = ITEMSIZE.get(part.dtype)
                n = elements(part.shape)
                if (
                    itemsize is None
                    or part.nonzero > n
                    or part.mask.length != (n + 7) // 8
                    or part.values.length != part.nonzero * itemsize
                ):
                    raise DataError(f"{archive}: {path}: tensor {part.name!r} is inconsistent")
        if sum(output_length(p) for p in entry.parts) != entry.bytes:
            raise DataError(f"{archive}: {path}: parts do not add up to {entry.bytes} bytes")
    for path in paths:
        if any(str(p) in paths for p in PurePosixPath(path).parents):
            raise DataError(f"{archive}: file {path!r} lies inside another file")


def unpack(
    archive: Path,
    dest_folder: Path,
    *,
    overwrite: bool = False,
    progress: ByteProgress | None = None,
) -> Path:
    """Rebuild the dense HF folder in `dest_folder`, each file checked against its sha256."""
    archive, dest_folder = Path(archive), Path(dest_folder)
    if not archive.is_file():
        raise DataError(f"{archive} does not exist")
    if dest_folder.exists() and not dest_folder.is_dir():
        raise ConfigError(f"{dest_folder} exists and is not a folder")
    if dest_folder.exists() and any(dest_folder.iterdir()) and not overwrite:
        raise ConfigError(
            f"{dest_folder} exists and is not empty; choose another folder or overwrite"
        )
    with ExitStack() as stack:
        f = stack.enter_context(archive.open("rb"))
        header = _read_header(f, archive)
        reader = _Reader(f, archive, progress, f"unpacking {header.name}",
                         sum(e.bytes for e in header.files))  # fmt: skip
        tmp = stack.enter_context(staged_folder(dest_folder))
        for entry in header.files:
            reader.restore(entry, tmp / entry.path)
    return dest_folder


class _Reader:
    def __init__(
        self, f: IO[bytes], archive: Path, progress: ByteProgress | None, what: str, total: int
    ):
        self.f = f
        self.archive = archive
        self.progress = progress
        self.what = what
        self.total = total
        self.done = 0

    def _read(self, offset: int, length: int) -> bytes:
        self.f.seek(offset)
        data = self.f.read(length)
        if len(data) != length:
            raise DataError(f"{self.archive} is truncated")
        return data

    def restore(self, entry: FileEntry, target: Path) -> None:
        target.parent.mkdir(parents=True, exist_ok=True)
        digest = hashlib.sha256()
        with target.open("wb") as out:
            for part in entry.parts:
                chunks = (
                    self._bitmask(part)
                    if isinstance(part, BitmaskTensor)
                    else self._copy(part.data)
                )
                for chunk in chunks:
                    digest.update(chunk)
                    out.write(chunk)
                    self.done += len(chunk)
                    if self.progress is not None:
                        self.progress(self.what, self.done, self.total)
        if digest.hexdigest() != entry.sha256:
            raise DataError(f"{self.archive} is corrupt: {entry.path} fails its sha256 check")

    def _copy(self, span: Span) -> Iterator[bytes]:
        for at in range(span.offset, span.offset + span.length, COPY_BYTES):
            yield self._read(at, min(COPY_BYTES, span.offset + span.length - at))

    def _bitmask(self, part: BitmaskTensor) -> Iterator[bytes]:
        itemsize = ITEMSIZE[part.dtype]
        uint = UINT[itemsize]
        n = elements(part.shape)
        values_at = part.values.offset
        used = 0
        for start in range(0, n, CHUNK_ELEMENTS):
            count = min(CHUNK_ELEMENTS, n - start)
            packed = np.frombuffer(
                self._read(part.mask.offset + start // 8, (count + 7) // 8), dtype=np.uint8
            )
            bits = np.unpackbits(packed, count=count, bitorder="little").view(bool)
            k = int(np.count_nonzero(bits))
            if used + k > part.nonzero:
                raise DataError(f"{self.archive} is corrupt: tensor {part.name!r}'s mask")
            out = np.zeros(count, dtype=uint)
            out[bits] = np.frombuffer(self._read(values_at, k * itemsize), dtype=uint)
            values_at += k * itemsize
            used += k
            yield out.tobytes()
        if used != part.nonzero:
            raise DataError(f"{self.archive} is corrupt: tensor {part.name!r}'s mask")
