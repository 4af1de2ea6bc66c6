"""The archive's layout: magic numbers, version, chunk sizes, the header (index) schema and the
report of a pack. Plain data; docs/compact-format.md describes the same layout for readers."""

from __future__ import annotations

import math
import struct
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

FORMAT = "optishear-compact"


VERSION = 1


ByteProgress = Callable[[str, int, int | None], None]  # (what, done, total), as assets.py


MAGIC = b"\x89OSHCPK\n"  # 8 bytes; the high byte and newline catch text-mode transfers


END_MAGIC = b"OSHCPKE\n"


PREAMBLE = struct.Struct("<8sII")  # magic, version, reserved (0)


TRAILER = struct.Struct("<QQ32s8s")  # index offset, index length, sha256(index), end magic


# A tensor is stored as bitmask + values when at least this share of its elements are zero.
# Below it the saving is small (under 19% of a bf16 tensor) and restoring costs a scatter;
# pruned weights sit at 50% or more, dense ones (embeddings, norms) near 0%.
MIN_ZERO_SHARE = 0.25


# Elements per step when scanning a tensor: a multiple of 8, so that each step's mask is whole
# bytes; bounds memory to a few times this (not the tensor) whatever the model's size.
CHUNK_ELEMENTS = 1 << 23


COPY_BYTES = 1 << 23


MAX_ST_HEADER = 100_000_000  # safetensors' own limit on its JSON header


# Bytes per element of the safetensors dtypes; a tensor of any other dtype is stored dense.
ITEMSIZE = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "F8_E8M0": 1,
    "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
    "I32": 4, "U32": 4, "F32": 4,
    "I64": 8, "U64": 8, "F64": 8,
}  # fmt: skip


# Elements are compared as unsigned integers of their width: a zero is an element whose bytes
# are all zero, so -0.0 and every NaN payload are values and survive bit for bit.
UINT = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}


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


def elements(shape: list[int]) -> int:
    return math.prod(shape)


def output_length(part: RawPart | DenseTensor | BitmaskTensor) -> int:
    if isinstance(part, BitmaskTensor):
        return elements(part.shape) * ITEMSIZE[part.dtype]
    return part.data.length


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
