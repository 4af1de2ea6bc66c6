"""Writing an archive: each safetensors tensor with enough zeros as bitmask + surviving values,
every other byte as it is, the index last, through a temporary file and a rename."""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import struct
import tarfile
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Literal

import numpy as np

from optishear import __version__
from optishear.artifacts.compact.layout import (
    CHUNK_ELEMENTS,
    COPY_BYTES,
    END_MAGIC,
    FORMAT,
    ITEMSIZE,
    MAGIC,
    MAX_ST_HEADER,
    MIN_ZERO_SHARE,
    PREAMBLE,
    TRAILER,
    UINT,
    VERSION,
    ArchiveHeader,
    BitmaskTensor,
    ByteProgress,
    CompactReport,
    DenseTensor,
    FileEntry,
    Part,
    RawPart,
    Span,
    elements,
)
from optishear.artifacts.compact.sources import Source, folder_sources, tar_sources
from optishear.core.errors import ConfigError, DataError


def pack(folder: Path, dest: Path, *, progress: ByteProgress | None = None) -> CompactReport:
    """Write the HF folder `folder` as one compact archive `dest` (atomically)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder} is not a folder")
    dest = Path(dest)
    if dest.resolve().is_relative_to(folder.resolve()):
        raise ConfigError(f"{dest} lies inside the folder it would pack; write it elsewhere")
    return _pack_sources(folder.name, folder_sources(folder), dest, progress)


def pack_tar(tar_path: Path, dest: Path, *, progress: ByteProgress | None = None) -> CompactReport:
    """Pack the folder inside an uncompressed tar (as optishear.artifacts.export.write_archive makes),
    reading its members in place; `unpack` then gives that folder."""
    tar_path = Path(tar_path)
    if not tar_path.is_file():
        raise DataError(f"{tar_path} does not exist")
    try:
        with tarfile.open(tar_path, "r:") as tar:
            name, sources = tar_sources(tar, tar_path)
            return _pack_sources(name, sources, Path(dest), progress)
    except tarfile.TarError as exc:
        raise DataError(f"{tar_path} is not a readable uncompressed tar: {exc}") from None


def _pack_sources(
    name: str, sources: list[Source], dest: Path, progress: ByteProgress | None
) -> CompactReport:
    start = time.perf_counter()
    if not sources:
        raise DataError(f"{name}: no files to pack")
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.tmp-", dir=dest.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out:
            writer = _Writer(out, progress, f"packing {name}", sum(s.size for s in sources))
            out.write(PREAMBLE.pack(MAGIC, VERSION, 0))
            entries = [writer.add_file(source) for source in sources]
            header = ArchiveHeader(
                format=FORMAT,
                version=VERSION,
                created_by=f"optishear {__version__}",
                name=name,
                files=entries,
            )
            index = json.dumps(header.model_dump(), separators=(",", ":")).encode()
            index_offset = out.tell()
            out.write(index)
            out.write(
                TRAILER.pack(index_offset, len(index), hashlib.sha256(index).digest(), END_MAGIC)
            )
            size = out.tell()
            out.flush()
            os.fchmod(out.fileno(), 0o644)  # mkstemp's 0600 would make a private download
            os.fsync(out.fileno())
        tmp.replace(dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(dest.parent)
    tensors = [p for e in entries for p in e.parts if not isinstance(p, RawPart)]
    return CompactReport(
        files=len(entries),
        tensors=len(tensors),
        packed_tensors=sum(isinstance(p, BitmaskTensor) for p in tensors),
        dense_bytes=sum(e.bytes for e in entries),
        compact_bytes=size,
        seconds=time.perf_counter() - start,
    )


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass(frozen=True)
class _StTensor:
    name: str
    dtype: str
    shape: list[int]
    begin: int  # absolute offsets in the file
    end: int


class _Writer:
    """Appends each file's parts to the archive and hashes the source bytes as it reads them."""

    def __init__(self, out: IO[bytes], progress: ByteProgress | None, what: str, total: int):
        self.out = out
        self.progress = progress
        self.what = what
        self.total = total
        self.done = 0

    def _advance(self, n: int) -> None:
        self.done += n
        if self.progress is not None:
            self.progress(self.what, self.done, self.total)

    def add_file(self, source: Source) -> FileEntry:
        digest = hashlib.sha256()
        with source.open() as f:
            if source.path.endswith(".safetensors"):
                parts = self._safetensors_parts(f, source, digest)
                kind: Literal["safetensors", "file"] = "safetensors"
            else:
                parts = [self._raw(f, 0, source.size, digest)]
                kind = "file"
        return FileEntry(
            path=source.path,
            kind=kind,
            bytes=source.size,
            sha256=digest.hexdigest(),
            parts=parts,
        )

    def _raw(self, f: IO[bytes], begin: int, end: int, digest: Any) -> RawPart:
        offset = self.out.tell()
        f.seek(begin)
        left = end - begin
        while left:
            chunk = f.read(min(left, COPY_BYTES))
            if not chunk:
                raise DataError(f"unexpected end of file at byte {end - left}")
            digest.update(chunk)
            self.out.write(chunk)
            left -= len(chunk)
            self._advance(len(chunk))
        return RawPart(encoding="raw", data=Span(offset=offset, length=end - begin))

    def _safetensors_parts(self, f: IO[bytes], source: Source, digest: Any) -> list[Part]:
        tensors, data_start = _read_st_layout(f, source)
        parts: list[Part] = [self._raw(f, 0, data_start, digest)]
        at = data_start
        for t in tensors:
            if t.begin > at:  # bytes no tensor claims: kept verbatim
                parts.append(self._raw(f, at, t.begin, digest))
            parts.append(self._tensor(f, t, digest))
            at = t.end
        if at < source.size:
            parts.append(self._raw(f, at, source.size, digest))
        return parts

    def _tensor(self, f: IO[bytes], t: _StTensor, digest: Any) -> Part:
        itemsize = ITEMSIZE.get(t.dtype)
        n = elements(t.shape)
        if itemsize is None or n == 0:
            raw = self._raw(f, t.begin, t.end, digest)
            return DenseTensor(encoding="dense", name=t.name, dtype=t.dtype, shape=t.shape,
                               data=raw.data)  # fmt: skip
        # first pass: hash the bytes (in file order) and count the non-zero elements
        nonzero = 0
        for u in _element_chunks(f, t, itemsize):
            digest.update(u)
            nonzero += int(np.count_nonzero(u))
        mask_len = (n + 7) // 8
        values_len = nonzero * itemsize
        offset = self.out.tell()
        if n - nonzero < MIN_ZERO_SHARE * n or mask_len + values_len >= n * itemsize:
            self._copy(f, t.begin, t.end)
            return DenseTensor(encoding="dense", name=t.name, dtype=t.dtype, shape=t.shape,
                               data=Span(offset=offset, length=t.end - t.begin))  # fmt: skip
        # second pass: masks go to [offset, offset + mask_len), values right after them
        values_at = offset + mask_len
        for i, u in enumerate(_element_chunks(f, t, itemsize)):
            bits = u != 0
            self.out.seek(offset + i * (CHUNK_ELEMENTS // 8))
            self.out.write(np.packbits(bits, bitorder="little").tobytes())
            self.out.seek(values_at)
            kept = u[bits].tobytes()
            self.out.write(kept)
            values_at += len(kept)
            self._advance(u.nbytes)
        self.out.seek(offset + mask_len + values_len)
        return BitmaskTensor(
            encoding="bitmask",
            name=t.name,
            dtype=t.dtype,
            shape=t.shape,
            nonzero=nonzero,
            mask=Span(offset=offset, length=mask_len),
            values=Span(offset=offset + mask_len, length=values_len),
        )

    def _copy(self, f: IO[bytes], begin: int, end: int) -> None:
        f.seek(begin)
        left = end - begin
        while left:
            chunk = f.read(min(left, COPY_BYTES))
            if not chunk:
                raise DataError("the file changed while it was being packed")
            self.out.write(chunk)
            left -= len(chunk)
            self._advance(len(chunk))


def _element_chunks(f: IO[bytes], t: _StTensor, itemsize: int) -> Iterator[np.ndarray]:
    f.seek(t.begin)
    uint = UINT[itemsize]
    left = t.end - t.begin
    while left:
        want = min(left, CHUNK_ELEMENTS * itemsize)
        buf = f.read(want)
        if len(buf) != want:
            raise DataError(f"tensor {t.name!r}: unexpected end of file")
        yield np.frombuffer(buf, dtype=uint)
        left -= want


def _read_st_layout(f: IO[bytes], source: Source) -> tuple[list[_StTensor], int]:
    """The tensors of a safetensors file in data order, and where its data region starts."""
    where = source.path
    head = f.read(8)
    if len(head) != 8:
        raise DataError(f"{where}: not a safetensors file (shorter than 8 bytes)")
    (header_len,) = struct.unpack("<Q", head)
    data_start = 8 + header_len
    if header_len > MAX_ST_HEADER or data_start > source.size:
        raise DataError(f"{where}: not a safetensors file (header length {header_len})")
    try:
        header = json.loads(f.read(header_len))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"{where}: not a safetensors file (header: {exc})") from None
    if not isinstance(header, dict):
        raise DataError(f"{where}: not a safetensors file (header is not an object)")
    tensors = []
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype, shape, (begin, end) = info["dtype"], info["shape"], info["data_offsets"]
        except (TypeError, KeyError, ValueError):
            raise DataError(f"{where}: tensor {name!r} has no dtype, shape or offsets") from None
        if not (
            isinstance(dtype, str)
            and isinstance(shape, list)
            and all(type(d) is int and d >= 0 for d in shape)
            and type(begin) is int
            and type(end) is int
            and 0 <= begin <= end <= source.size - data_start
        ):
            raise DataError(f"{where}: tensor {name!r} has a bad dtype, shape or offsets")
        itemsize = ITEMSIZE.get(dtype)
        if itemsize is not None and elements(shape) * itemsize != end - begin:
            raise DataError(f"{where}: tensor {name!r} holds {end - begin} bytes, not {shape}")
        tensors.append(_StTensor(name, dtype, shape, data_start + begin, data_start + end))
    tensors.sort(key=lambda t: (t.begin, t.end))
    for a, b in itertools.pairwise(tensors):
        if b.begin < a.end:
            raise DataError(f"{where}: tensors {a.name!r} and {b.name!r} overlap")
    return tensors, data_start
