"""The compact download format: a pruned HF folder as bitmask + surviving values, restored bit for bit.

Layout, header schema, versioning and integrity checks are documented in docs/compact-format.md.
The package imports no torch, so the service's API process may use it: layout (constants, the
header schema, the report), sources (reading a folder or a tar), writer (pack) and reader
(reading back).
"""

from optishear.artifacts.compact.layout import (
    FORMAT,
    ITEMSIZE,
    MAGIC,
    VERSION,
    ArchiveHeader,
    BitmaskTensor,
    ByteProgress,
    CompactReport,
    DenseTensor,
    RawPart,
)
from optishear.artifacts.compact.reader import read_header, unpack
from optishear.artifacts.compact.writer import pack, pack_tar

__all__ = [
    "FORMAT",
    "ITEMSIZE",
    "MAGIC",
    "VERSION",
    "ArchiveHeader",
    "BitmaskTensor",
    "ByteProgress",
    "CompactReport",
    "DenseTensor",
    "RawPart",
    "pack",
    "pack_tar",
    "read_header",
    "unpack",
]
