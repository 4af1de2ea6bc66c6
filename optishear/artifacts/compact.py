"""The compact download format: a pruned HF folder as bitmask + surviving values, restored bit for bit.

Layout, header schema, versioning and integrity checks are documented in docs/compact-format.md.
This module imports no torch, so the service's API process may use it.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import os
import struct
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import asdict, dataclass
from pathlib import Path, PurePosixPath
from typing import IO, Annotated, Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from optishear import __version__
from optishear.core.errors import ConfigError, DataError
from optishear.core.files import staged_folder

FORMAT = "optishear-compact"
VERSION = 1

ByteProgress = Callable[[str, int, int | None], None]  # (what, done, total), as assets.py

MAGIC = b"\x89OSHCPK\n"  # 8 bytes; the high byte and newline catch text-mode transfers
END_MAGIC = b"OSHCPKE\n"
_PREAMBLE = struct.Struct("<8sII")  # magic, version, reserved (0)
_TRAILER = struct.Struct("<QQ32s8s")  # index offset, index length, sha256(index), end magic

# A tensor is stored as bitmask + values when at least this share of its elements are zero.
# Below it the saving is small (under 19% of a bf16 tensor) and restoring costs a scatter;
# pruned weights sit at 50% or more, dense ones (embeddings, norms) near 0%.
MIN_ZERO_SHARE = 0.25
# Elements per step when scanning a tensor: a multiple of 8, so that each step's mask is whole
# bytes; bounds memory to a few times this (not the tensor) whatever the model's size.
CHUNK_ELEMENTS = 1 << 23
_COPY_BYTES = 1 << 23
_MAX_ST_HEADER = 100_000_000  # safetensors' own limit on its JSON header

# Bytes per element of the safetensors dtypes; a tensor of any other dtype is stored dense.
ITEMSIZE = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "F8_E8M0": 1,
    "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
    "I32": 4, "U32": 4, "F32": 4,
    "I64": 8, "U64": 8, "F64": 8,
}  # fmt: skip
# Elements are compared as unsigned integers of their width: a zero is an element whose bytes
# are all zero, so -0.0 and every NaN payload are values and survive bit for bit.
_UINT = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}


# --- the header (index) schema -------------------------------------------------------------------


class _Schema(BaseModel):
    # extra keys are ignored: a same-version writer may add fields that readers can skip
    model_config = ConfigDict(extra="ignore", frozen=True, strict=True)


class Span(_Schema):
    offset: int = Field(ge=0)
    length: int = Field(ge=0)


class RawPart(_Schema):
    """Bytes copied verbatim: a safetensors header, a gap, or a whole non-tensor file."""

    encoding: Literal["raw"]
    data: Span


class DenseTensor(_Schema):
    encoding: Literal["dense"]
    name: str
    dtype: str
    shape: list[Annotated[int, Field(ge=0)]]
    data: Span


class BitmaskTensor(_Schema):
    """Bit i (little bit order, row-major) says element i is non-zero; values hold those."""

    encoding: Literal["bitmask"]
    name: str
    dtype: str
    shape: list[Annotated[int, Field(ge=0)]]
    nonzero: int = Field(ge=0)
    mask: Span
    values: Span


Part = Annotated[RawPart | DenseTensor | BitmaskTensor, Field(discriminator="encoding")]


class FileEntry(_Schema):
    """One file of the folder: its bytes are its parts' outputs, concatenated in order."""

    path: str
    kind: Literal["safetensors", "file"]
    bytes: int = Field(ge=0)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    parts: list[Part]


class ArchiveHeader(_Schema):
    format: Literal["optishear-compact"]
    version: int
    created_by: str
    name: str  # the folder's name (the tar's top-level folder for pack_tar)
    files: list[FileEntry]


def _elements(shape: list[int]) -> int:
    return math.prod(shape)


def _output_length(part: RawPart | DenseTensor | BitmaskTensor) -> int:
    if isinstance(part, BitmaskTensor):
        return _elements(part.shape) * ITEMSIZE[part.dtype]
    return part.data.length


# --- report --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CompactReport:
    files: int
    tensors: int
    packed_tensors: int  # stored as bitmask + values
    dense_bytes: int  # the files' bytes as they are on disk
    compact_bytes: int  # the archive's bytes
    seconds: float

    @property
    def ratio(self) -> float:
        """compact / dense bytes: 0.6 means the archive is 60% of the folder's size."""
        return self.compact_bytes / self.dense_bytes if self.dense_bytes else 1.0

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ratio": self.ratio}


# --- sources: a folder or a tar, read file by file -----------------------------------------------


@dataclass(frozen=True)
class _Source:
    path: str  # relative, posix
    size: int
    open: Callable[[], IO[bytes]]


def _safe_relpath(text: str, where: str) -> str:
    p = PurePosixPath(text)
    if (
        not text
        or "\\" in text
        or p.is_absolute()
        or any(part in ("", ".", "..") for part in text.split("/"))
    ):
        raise DataError(f"{where}: unsafe file path {text!r} (absolute, empty or with '..')")
    return p.as_posix()


def _sort_key(source: _Source) -> tuple[str, ...]:
    return PurePosixPath(source.path).parts  # write_archive's order


def _folder_sources(folder: Path) -> list[_Source]:
    sources = []
    for p in folder.rglob("*"):
        if p.is_file():
            rel = p.relative_to(folder).as_posix()
            sources.append(_Source(rel, p.stat().st_size, lambda p=p: p.open("rb")))
    return sorted(sources, key=_sort_key)


def _tar_sources(tar: tarfile.TarFile, tar_path: Path) -> tuple[str, list[_Source]]:
    roots = set()
    sources = []
    for member in tar.getmembers():
        name = member.name.rstrip("/")
        while name.startswith("./"):  # `tar -cf x.tar ./folder` names members so
            name = name[2:]
        if member.isdir() and name in ("", "."):
            continue
        name = _safe_relpath(name, str(tar_path))
        root, _, rel = name.partition("/")
        roots.add(root)
        if member.isdir():
            continue
        if not member.isfile() or not rel:
            raise DataError(f"{tar_path}: member {member.name!r} is not a file in a folder")
        sources.append(_Source(rel, member.size, lambda m=member: _extract(tar, m)))
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


# --- pack ----------------------------------------------------------------------------------------


def pack(folder: Path, dest: Path, *, progress: ByteProgress | None = None) -> CompactReport:
    """Write the HF folder `folder` as one compact archive `dest` (atomically)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder} is not a folder")
    dest = Path(dest)
    if dest.resolve().is_relative_to(folder.resolve()):
        raise ConfigError(f"{dest} lies inside the folder it would pack; write it elsewhere")
    return _pack_sources(folder.name, _folder_sources(folder), dest, progress)


def pack_tar(tar_path: Path, dest: Path, *, progress: ByteProgress | None = None) -> CompactReport:
    """Pack the folder inside an uncompressed tar (as optishear.artifacts.export.write_archive makes),
    reading its members in place; `unpack` then gives that folder."""
    tar_path = Path(tar_path)
    if not tar_path.is_file():
        raise DataError(f"{tar_path} does not exist")
    try:
        with tarfile.open(tar_path, "r:") as tar:
            name, sources = _tar_sources(tar, tar_path)
            return _pack_sources(name, sources, Path(dest), progress)
    except tarfile.TarError as exc:
        raise DataError(f"{tar_path} is not a readable uncompressed tar: {exc}") from None


def _pack_sources(
    name: str, sources: list[_Source], dest: Path, progress: ByteProgress | None
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
            out.write(_PREAMBLE.pack(MAGIC, VERSION, 0))
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
                _TRAILER.pack(index_offset, len(index), hashlib.sha256(index).digest(), END_MAGIC)
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

    def add_file(self, source: _Source) -> FileEntry:
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
            chunk = f.read(min(left, _COPY_BYTES))
            if not chunk:
                raise DataError(f"unexpected end of file at byte {end - left}")
            digest.update(chunk)
            self.out.write(chunk)
            left -= len(chunk)
            self._advance(len(chunk))
        return RawPart(encoding="raw", data=Span(offset=offset, length=end - begin))

    def _safetensors_parts(self, f: IO[bytes], source: _Source, digest: Any) -> list[Part]:
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
        n = _elements(t.shape)
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
            chunk = f.read(min(left, _COPY_BYTES))
            if not chunk:
                raise DataError("the file changed while it was being packed")
            self.out.write(chunk)
            left -= len(chunk)
            self._advance(len(chunk))


def _element_chunks(f: IO[bytes], t: _StTensor, itemsize: int) -> Iterator[np.ndarray]:
    f.seek(t.begin)
    uint = _UINT[itemsize]
    left = t.end - t.begin
    while left:
        want = min(left, CHUNK_ELEMENTS * itemsize)
        buf = f.read(want)
        if len(buf) != want:
            raise DataError(f"tensor {t.name!r}: unexpected end of file")
        yield np.frombuffer(buf, dtype=uint)
        left -= want


def _read_st_layout(f: IO[bytes], source: _Source) -> tuple[list[_StTensor], int]:
    """The tensors of a safetensors file in data order, and where its data region starts."""
    where = source.path
    head = f.read(8)
    if len(head) != 8:
        raise DataError(f"{where}: not a safetensors file (shorter than 8 bytes)")
    (header_len,) = struct.unpack("<Q", head)
    data_start = 8 + header_len
    if header_len > _MAX_ST_HEADER or data_start > source.size:
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
        if itemsize is not None and _elements(shape) * itemsize != end - begin:
            raise DataError(f"{where}: tensor {name!r} holds {end - begin} bytes, not {shape}")
        tensors.append(_StTensor(name, dtype, shape, data_start + begin, data_start + end))
    tensors.sort(key=lambda t: (t.begin, t.end))
    for a, b in itertools.pairwise(tensors):
        if b.begin < a.end:
            raise DataError(f"{where}: tensors {a.name!r} and {b.name!r} overlap")
    return tensors, data_start


# --- unpack --------------------------------------------------------------------------------------


def read_header(archive: Path) -> ArchiveHeader:
    """The archive's checked header (the index of its files, parts and tensors)."""
    with Path(archive).open("rb") as f:
        return _read_header(f, Path(archive))


def _read_header(f: IO[bytes], archive: Path) -> ArchiveHeader:
    size = os.fstat(f.fileno()).st_size
    head = f.read(_PREAMBLE.size)
    if head[:8] != MAGIC[: len(head)] or not head:
        hint = " (it is a tar: extract it with tar)" if _looks_like_tar(f) else ""
        raise DataError(f"{archive} is not an OptiShear compact archive{hint}")
    if len(head) < _PREAMBLE.size:
        raise DataError(f"{archive} is truncated ({size} bytes)")
    _, version, _ = _PREAMBLE.unpack(head)
    _check_version(version, archive)
    if size < _PREAMBLE.size + _TRAILER.size:
        raise DataError(f"{archive} is truncated ({size} bytes)")
    f.seek(size - _TRAILER.size)
    index_offset, index_len, index_sha, end = _TRAILER.unpack(f.read(_TRAILER.size))
    if end != END_MAGIC:
        raise DataError(f"{archive} is truncated or corrupt (no end marker)")
    if not _PREAMBLE.size <= index_offset <= size - _TRAILER.size - index_len:
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
        path = _safe_relpath(entry.path, str(archive))
        if path in paths:
            raise DataError(f"{archive}: file {path!r} is listed twice")
        paths.add(path)
        for part in entry.parts:
            spans = [part.mask, part.values] if isinstance(part, BitmaskTensor) else [part.data]
            for span in spans:
                if not _PREAMBLE.size <= span.offset <= data_end - span.length:
                    raise DataError(f"{archive}: {path}: a part lies outside the data area")
            if isinstance(part, BitmaskTensor):
                itemsize = ITEMSIZE.get(part.dtype)
                n = _elements(part.shape)
                if (
                    itemsize is None
                    or part.nonzero > n
                    or part.mask.length != (n + 7) // 8
                    or part.values.length != part.nonzero * itemsize
                ):
                    raise DataError(f"{archive}: {path}: tensor {part.name!r} is inconsistent")
        if sum(_output_length(p) for p in entry.parts) != entry.bytes:
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
        for at in range(span.offset, span.offset + span.length, _COPY_BYTES):
            yield self._read(at, min(_COPY_BYTES, span.offset + span.length - at))

    def _bitmask(self, part: BitmaskTensor) -> Iterator[bytes]:
        itemsize = ITEMSIZE[part.dtype]
        uint = _UINT[itemsize]
        n = _elements(part.shape)
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
