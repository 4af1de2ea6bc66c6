"""Files for the compact archive's tests: a folder's checksums, a safetensors file by hand."""

import json
import struct
from pathlib import Path

from optishear.core.files import sha256_file


def file_sums(folder: Path) -> dict[str, str]:
    return {
        p.relative_to(folder).as_posix(): sha256_file(p)
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def st_file(path: Path, header: dict, data: bytes, pad: bytes = b"") -> None:
    """A safetensors file written by hand: header keys in the given order, optional padding."""
    raw = json.dumps(header).encode() + pad
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)
