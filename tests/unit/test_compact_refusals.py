"""The compact archive refuses what it cannot restore bit for bit: newer versions, corrupt,
truncated, foreign or inconsistent archives, bad sources, non-empty destinations."""

import hashlib
import json
from pathlib import Path

import pytest
import torch
from compact_files import file_sums, st_file
from tiny_models import build_tiny

from optishear.artifacts.compact import (
    VERSION,
    BitmaskTensor,
    layout,
    pack,
    read_header,
    unpack,
)
from optishear.artifacts.export import export_checkpoint, write_archive
from optishear.config import PruneConfig
from optishear.core.errors import ConfigError, DataError
from optishear.recipe.prune import prune_model


@pytest.fixture
def archive(tmp_path) -> Path:
    folder = tmp_path / "ckpt"
    model = build_tiny("llama")
    ids = torch.randint(0, 128, (4, 16), generator=torch.Generator().manual_seed(0))
    prune_model(model, ids, PruneConfig(method="wanda", sparsity=0.5))
    export_checkpoint(model, None, folder, {})
    pack(folder, tmp_path / "ckpt.oshc")
    return tmp_path / "ckpt.oshc"


def _rewrite_header(path: Path, edit, *, version: int | None = None) -> None:
    """Replace the header by edit(header) with a consistent trailer (and preamble version)."""
    raw = path.read_bytes()
    offset, length, _, end = layout.TRAILER.unpack(raw[-layout.TRAILER.size :])
    header = json.loads(raw[offset : offset + length])
    index = json.dumps(edit(header)).encode()
    body = raw[:offset]
    if version is not None:
        body = layout.PREAMBLE.pack(layout.MAGIC, version, 0) + body[layout.PREAMBLE.size :]
    trailer = layout.TRAILER.pack(offset, len(index), hashlib.sha256(index).digest(), end)
    path.write_bytes(body + index + trailer)


def _first(header: dict, encoding: str) -> dict:
    return next(p for f in header["files"] for p in f["parts"] if p["encoding"] == encoding)


def test_newer_version_is_refused_with_a_message(archive, tmp_path) -> None:
    _rewrite_header(archive, lambda h: {**h, "version": VERSION + 1}, version=VERSION + 1)
    with pytest.raises(DataError, match=rf"version {VERSION + 1}.*upgrade optishear"):
        unpack(archive, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_header_version_must_match_the_preamble(archive, tmp_path) -> None:
    _rewrite_header(archive, lambda h: {**h, "version": VERSION + 1})
    with pytest.raises(DataError, match="upgrade optishear"):
        unpack(archive, tmp_path / "out")


@pytest.mark.parametrize(
    ("where", "message"),
    [
        ("data", "fails its sha256 check"),
        ("mask", "corrupt"),
        ("header", "header checksum mismatch"),
        ("preamble", "not an OptiShear compact archive"),
        ("trailer", "no end marker"),
    ],
)
def test_corrupt_archive_is_refused(archive, tmp_path, where, message) -> None:
    raw = bytearray(archive.read_bytes())
    header = read_header(archive)
    offset = layout.TRAILER.unpack(raw[-layout.TRAILER.size :])[0]
    bitmask = next(p for f in header.files for p in f.parts if isinstance(p, BitmaskTensor))
    at = {
        "data": bitmask.values.offset + 5,
        "mask": bitmask.mask.offset + 3,
        "header": offset + 10,
        "preamble": 1,
        "trailer": len(raw) - 2,
    }[where]
    raw[at] ^= 0x10
    archive.write_bytes(bytes(raw))
    with pytest.raises(DataError, match=message):
        unpack(archive, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt", archive.name]  # no scratch


@pytest.mark.parametrize(
    ("keep", "message"),
    [
        (0, "not an OptiShear compact archive"),
        (5, "is truncated"),
        (16, "is truncated"),
        (40, "is truncated"),
        (0.5, "no end marker"),
        (-1, "no end marker"),
        (-56, "no end marker"),  # the whole trailer gone
    ],
)
def test_truncated_archive_is_refused(archive, tmp_path, keep, message) -> None:
    raw = archive.read_bytes()
    n = int(len(raw) * keep) if isinstance(keep, float) else keep % len(raw)
    archive.write_bytes(raw[:n])
    with pytest.raises(DataError, match=message):
        unpack(archive, tmp_path / "out")


def test_foreign_files_are_refused(tmp_path) -> None:
    (tmp_path / "f.txt").write_text("hello")
    (tmp_path / "f.txt").rename(tmp_path / "f.bin")
    with pytest.raises(DataError, match="not an OptiShear compact archive"):
        unpack(tmp_path / "f.bin", tmp_path / "out")
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "x").write_text("x")
    write_archive(tmp_path / "d", tmp_path / "d.tar")
    with pytest.raises(DataError, match="it is a tar"):
        unpack(tmp_path / "d.tar", tmp_path / "out")
    with pytest.raises(DataError, match="does not exist"):
        unpack(tmp_path / "missing.oshc", tmp_path / "out")


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda h: h["files"][0].update(path="../evil") or h, "unsafe file path"),
        (lambda h: h["files"][0].update(path="/etc/evil") or h, "unsafe file path"),
        (lambda h: {**h, "files": [h["files"][0], h["files"][0]]}, "listed twice"),
        (lambda h: h["files"][0].update(bytes=1) or h, "do not add up"),
        (lambda h: _first(h, "bitmask").update(nonzero=1) or h, "inconsistent"),
        (lambda h: _first(h, "raw")["data"].update(offset=10**12) or h, "outside the data area"),
        (lambda h: _first(h, "raw").update(encoding="zstd") or h, "invalid header"),
        (lambda h: {**h, "format": "other"}, "invalid header"),
    ],
)
def test_inconsistent_header_is_refused(archive, tmp_path, edit, message) -> None:
    _rewrite_header(archive, edit)
    with pytest.raises(DataError, match=message):
        unpack(archive, tmp_path / "out")
    assert not (tmp_path.parent / "evil").exists()


def test_unpack_refuses_a_non_empty_folder_unless_overwrite(archive, tmp_path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("user data")
    with pytest.raises(ConfigError, match="not empty"):
        unpack(archive, out)
    assert (out / "keep.txt").read_text() == "user data"
    unpack(archive, out, overwrite=True)
    assert not (out / "keep.txt").exists()
    assert file_sums(out) == file_sums(tmp_path / "ckpt")


def test_failed_unpack_leaves_the_destination_as_it_was(archive, tmp_path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("user data")
    raw = bytearray(archive.read_bytes())
    raw[200] ^= 0xFF  # inside the first file's data
    archive.write_bytes(bytes(raw))
    with pytest.raises(DataError):
        unpack(archive, out, overwrite=True)
    assert [p.name for p in out.iterdir()] == ["keep.txt"]


def test_pack_refuses_bad_sources(tmp_path) -> None:
    with pytest.raises(DataError, match="is not a folder"):
        pack(tmp_path / "missing", tmp_path / "x.oshc")
    folder = tmp_path / "f"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(b"\xff" * 20)
    with pytest.raises(DataError, match="not a safetensors file"):
        pack(folder, tmp_path / "x.oshc")
    with pytest.raises(ConfigError, match="inside the folder"):
        pack(folder, folder / "x.oshc")
    (folder / "model.safetensors").unlink()
    st_file(folder / "model.safetensors",
             {"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]},
              "b": {"dtype": "F32", "shape": [4], "data_offsets": [8, 24]}}, bytes(24))  # fmt: skip
    with pytest.raises(DataError, match="overlap"):
        pack(folder, tmp_path / "x.oshc")
    assert not (tmp_path / "x.oshc").exists()


def test_progress_reports_bytes_to_the_total(archive, tmp_path) -> None:
    calls: list[tuple[str, int, int | None]] = []
    unpack(archive, tmp_path / "out", progress=lambda *a: calls.append(a))
    total = sum(e.bytes for e in read_header(archive).files)
    assert calls[-1] == ("unpacking ckpt", total, total)
    assert [c[1] for c in calls] == sorted(c[1] for c in calls)
    calls.clear()
    pack(tmp_path / "out", tmp_path / "again.oshc", progress=lambda *a: calls.append(a))
    assert calls[-1] == ("packing out", total, total)
