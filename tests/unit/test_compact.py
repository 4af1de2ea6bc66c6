"""The compact archive: bit-for-bit round trips, the zero rule, and refusal of bad archives."""

import math
import tarfile
from pathlib import Path

import pytest
import torch
from compact_files import file_sums, st_file
from safetensors.torch import load_file
from tiny_models import build_tiny, tiny_tokenizer

from optishear.artifacts.compact import (
    FORMAT,
    VERSION,
    BitmaskTensor,
    DenseTensor,
    RawPart,
    pack,
    pack_tar,
    read_header,
    reader,
    unpack,
    writer,
)
from optishear.artifacts.export import export_checkpoint, write_archive
from optishear.config import PruneConfig
from optishear.core.errors import DataError
from optishear.core.files import sha256_file
from optishear.core.patterns import Pattern
from optishear.recipe.prune import prune_model

SPECIAL = "model.layers.0.mlp.down_proj.weight"  # a pruned tensor that gets odd bit patterns
# (dtype, bits as a signed int of the dtype's width): -0.0 and NaNs with payloads of both signs
ODD_BITS = {
    torch.float32: (torch.int32, [-(2**31), 0x7FC00123, -0x3FFFEDCB]),
    torch.bfloat16: (torch.int16, [-(2**15), 0x7FC1, -0x3F]),
}


def _export(tmp_path: Path, dtype: torch.dtype, sparsity: float, pattern: Pattern | None) -> Path:
    model = build_tiny("llama", hidden=64, layers=2)
    if pattern is not None:
        ids = torch.randint(0, 128, (4, 16), generator=torch.Generator().manual_seed(0))
        prune_model(model, ids, PruneConfig(method="wanda", sparsity=sparsity, pattern=pattern))
    model.to(dtype)
    as_int, bits = ODD_BITS[dtype]
    weight = dict(model.named_parameters())[SPECIAL].data
    weight.view(as_int)[0, : len(bits)] = torch.tensor(bits, dtype=as_int)
    folder = tmp_path / "ckpt"
    export_checkpoint(model, tiny_tokenizer(), folder, {"test": True}, max_shard_size="100KB")
    return folder


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["f32", "bf16"])
@pytest.mark.parametrize(
    ("sparsity", "pattern"),
    [(0.5, Pattern()), (0.5, Pattern(2, 4)), (0.7, Pattern()), (0.0, None)],
    ids=["50%", "2:4", "70%", "dense"],
)
def test_round_trip_is_bit_for_bit(tmp_path, dtype, sparsity, pattern) -> None:
    folder = _export(tmp_path, dtype, sparsity, pattern)
    assert sum(name.endswith(".safetensors") for name in file_sums(folder)) > 1  # sharded
    report = pack(folder, tmp_path / "ckpt.oshc")
    restored = unpack(tmp_path / "ckpt.oshc", tmp_path / "restored")

    assert file_sums(restored) == file_sums(folder)
    for name in file_sums(folder):
        assert (restored / name).read_bytes() == (folder / name).read_bytes()
    header = read_header(tmp_path / "ckpt.oshc")
    assert (header.format, header.version, header.name) == (FORMAT, VERSION, "ckpt")
    assert {e.path: e.sha256 for e in header.files} == file_sums(folder)
    assert report.files == len(header.files)
    assert report.dense_bytes == sum((folder / n).stat().st_size for n in file_sums(folder))
    assert report.compact_bytes == (tmp_path / "ckpt.oshc").stat().st_size

    tensors = {p.name: p for e in header.files for p in e.parts if not isinstance(p, RawPart)}
    assert report.tensors == len(tensors)
    packed = {n for n, p in tensors.items() if isinstance(p, BitmaskTensor)}
    assert report.packed_tensors == len(packed)
    prunable = {n for n in tensors if n.startswith("model.layers.") and "proj" in n}
    if pattern is None:
        assert packed == set()
        assert report.ratio > 1  # only the header and preamble added
    else:
        assert packed == prunable  # norms and the embedding hold no zeros and stay dense
        itemsize = torch.empty((), dtype=dtype).element_size()
        layer_bound = 1 - sparsity + 1 / (8 * itemsize) + 0.01
        layers_dense = sum(itemsize * math.prod(tensors[n].shape) for n in packed)
        layers_stored = sum(tensors[n].mask.length + tensors[n].values.length for n in packed)
        assert layers_stored / layers_dense < layer_bound
        assert report.ratio < 1

    # -0.0 and the NaN payloads are values (kept in the bitmask tensor), back bit for bit
    as_int, bits = ODD_BITS[dtype]
    original = _load(folder)[SPECIAL].view(as_int)
    back = _load(restored)[SPECIAL].view(as_int)
    assert original[0, : len(bits)].tolist() == bits
    assert torch.equal(back, original)
    special = tensors[SPECIAL]
    if pattern is not None:
        assert isinstance(special, BitmaskTensor)
        assert special.nonzero == int((original != 0).sum())


def _load(folder: Path) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for p in folder.glob("*.safetensors"):
        out.update(load_file(p))
    return out


def test_odd_safetensors_layouts_survive(tmp_path, monkeypatch) -> None:
    """Unsorted keys, metadata, padding, a gap, trailing bytes, zero-size, all -0.0, every dtype,
    and tensors spanning many small scan steps (with a tail not a multiple of 8)."""
    # both directions walk a tensor in CHUNK_ELEMENTS steps
    monkeypatch.setattr(writer, "CHUNK_ELEMENTS", 64)
    monkeypatch.setattr(reader, "CHUNK_ELEMENTS", 64)
    folder = tmp_path / "odd"
    folder.mkdir()
    gen = torch.Generator().manual_seed(0)
    sparse = torch.randn(13, 37, generator=gen) * (torch.rand(13, 37, generator=gen) > 0.6)
    neg_zero = torch.full((10, 10), -0.0)
    ints = torch.randint(-3, 3, (300,), generator=gen, dtype=torch.int64) * (
        torch.arange(300) % 3 == 0
    )
    half = sparse.to(torch.float16)
    blobs = [
        ("z.sparse", "F32", list(sparse.shape), sparse.numpy().tobytes()),
        ("a.negzero", "F32", [10, 10], neg_zero.numpy().tobytes()),
        ("m.ints", "I64", [300], ints.numpy().tobytes()),
        ("b.empty", "F32", [0, 4], b""),
        ("h.half", "F16", list(half.shape), half.view(torch.int16).numpy().tobytes()),
        ("q.unknown", "F4", [8], bytes(4)),  # an unknown dtype: kept dense
    ]
    header: dict = {"__metadata__": {"format": "pt", "note": "odd"}}
    data = b""
    for i, (name, dtype, shape, raw) in enumerate(blobs):
        if i == 2:
            data += b"\x01gap\x00"  # bytes no tensor claims
        header[name] = {
            "dtype": dtype,
            "shape": shape,
            "data_offsets": [len(data), len(data) + len(raw)],
        }
        data += raw
    st_file(folder / "odd.safetensors", header, data + b"tail", pad=b"    ")
    (folder / "sub").mkdir()
    (folder / "sub" / "notes.txt").write_text("kept verbatim")
    (folder / "empty.json").write_bytes(b"")

    pack(folder, tmp_path / "odd.oshc")
    restored = unpack(tmp_path / "odd.oshc", tmp_path / "restored")
    assert file_sums(restored) == file_sums(folder)
    assert (restored / "odd.safetensors").read_bytes() == (folder / "odd.safetensors").read_bytes()

    parts = {p.name: p for e in read_header(tmp_path / "odd.oshc").files for p in e.parts
             if not isinstance(p, RawPart)}  # fmt: skip
    assert isinstance(parts["z.sparse"], BitmaskTensor)
    # randn * False is -0.0 for negative draws: values, by the zero rule
    assert int((sparse == 0).sum()) > int((sparse.view(torch.int32) == 0).sum()) > 0
    assert parts["z.sparse"].nonzero == int((sparse.view(torch.int32) != 0).sum())
    assert isinstance(parts["a.negzero"], DenseTensor)  # -0.0 is no zero: nothing to drop
    assert isinstance(parts["m.ints"], BitmaskTensor)
    assert isinstance(parts["h.half"], BitmaskTensor)
    assert isinstance(parts["q.unknown"], DenseTensor)
    assert isinstance(parts["b.empty"], DenseTensor)


def test_pack_tar_gives_the_folder_in_the_tar(tmp_path) -> None:
    folder = _export(tmp_path, torch.float32, 0.5, Pattern(2, 4))
    named = tmp_path / "optishear-7-uniform"
    folder.rename(named)
    write_archive(named, tmp_path / "ck.tar")

    report = pack_tar(tmp_path / "ck.tar", tmp_path / "from-tar.oshc")
    assert report.packed_tensors > 0
    # the tar's folder packs to exactly the archive of the folder itself
    pack(named, tmp_path / "from-folder.oshc")
    assert sha256_file(tmp_path / "from-tar.oshc") == sha256_file(tmp_path / "from-folder.oshc")
    assert read_header(tmp_path / "from-tar.oshc").name == "optishear-7-uniform"

    with tarfile.open(tmp_path / "ck.tar") as tar:
        tar.extractall(tmp_path / "extracted", filter="data")
    restored = unpack(tmp_path / "from-tar.oshc", tmp_path / "restored")
    assert file_sums(restored) == file_sums(tmp_path / "extracted" / "optishear-7-uniform")


def test_pack_tar_takes_members_named_dot_slash(tmp_path) -> None:
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "f.txt").write_text("f")
    with tarfile.open(tmp_path / "dot.tar", "w") as tar:
        tar.add(tmp_path / "x", arcname="./x")
    pack_tar(tmp_path / "dot.tar", tmp_path / "dot.oshc")
    assert read_header(tmp_path / "dot.oshc").name == "x"
    assert (unpack(tmp_path / "dot.oshc", tmp_path / "out") / "f.txt").read_text() == "f"


def test_pack_tar_refuses_foreign_tars(tmp_path) -> None:
    (tmp_path / "not.tar").write_bytes(b"no tar here" * 100)
    with pytest.raises(DataError, match="not a readable uncompressed tar"):
        pack_tar(tmp_path / "not.tar", tmp_path / "x.oshc")
    for d in ("a", "b"):
        (tmp_path / d).mkdir()
        (tmp_path / d / "f.txt").write_text(d)
    with tarfile.open(tmp_path / "two.tar", "w") as tar:
        tar.add(tmp_path / "a", arcname="a")
        tar.add(tmp_path / "b", arcname="b")
    with pytest.raises(DataError, match="one top-level folder"):
        pack_tar(tmp_path / "two.tar", tmp_path / "x.oshc")
    assert not (tmp_path / "x.oshc").exists()
    assert [p.name for p in tmp_path.glob(".x.oshc*")] == []  # no temporary file left
