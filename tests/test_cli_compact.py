"""`optishear pack` and `optishear unpack` end to end, and their handling of bad input."""

import torch
from tiny_models import build_tiny, tiny_tokenizer

from optishear.artifacts.export import export_checkpoint, write_archive
from optishear.cli import main
from optishear.config import PruneConfig
from optishear.core.files import sha256_file
from optishear.recipe.prune import prune_model


def _pruned_folder(tmp_path):
    model = build_tiny("llama")
    ids = torch.randint(0, 128, (4, 16), generator=torch.Generator().manual_seed(0))
    prune_model(model, ids, PruneConfig(method="wanda", sparsity=0.5))
    folder = tmp_path / "ckpt"
    export_checkpoint(model, tiny_tokenizer(), folder, {})
    return folder


def _sums(folder):
    return {p.name: sha256_file(p) for p in folder.iterdir()}


def test_pack_unpack_folder_and_tar(tmp_path, capsys) -> None:
    folder = _pruned_folder(tmp_path)
    assert main(["--no-progress", "pack", str(folder), "--out", str(tmp_path / "a.oshc")]) == 0
    out = capsys.readouterr().out
    assert "14 of 21 tensors as bitmask + values" in out
    assert "ratio 0." in out

    write_archive(folder, tmp_path / "ckpt.tar")
    assert main(["pack", str(tmp_path / "ckpt.tar"), "--out", str(tmp_path / "b.oshc")]) == 0
    assert sha256_file(tmp_path / "a.oshc") == sha256_file(tmp_path / "b.oshc")
    capsys.readouterr()

    assert main(["unpack", str(tmp_path / "b.oshc"), "--out", str(tmp_path / "back")]) == 0
    out = capsys.readouterr().out
    assert "every sha256 checked" in out
    assert _sums(tmp_path / "back") == _sums(folder)

    # a non-empty folder needs --overwrite
    assert main(["unpack", str(tmp_path / "b.oshc"), "--out", str(tmp_path / "back")]) == 2
    assert "not empty" in capsys.readouterr().err
    args = ["unpack", str(tmp_path / "b.oshc"), "--out", str(tmp_path / "back"), "--overwrite"]
    assert main(args) == 0


def test_bad_files_give_a_message_and_exit_2(tmp_path, capsys) -> None:
    folder = _pruned_folder(tmp_path)
    (tmp_path / "junk.oshc").write_bytes(b"junk" * 50)
    assert main(["unpack", str(tmp_path / "junk.oshc"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "optishear: error:" in err
    assert "not an OptiShear compact archive" in err
    assert "Traceback" not in err

    assert main(["pack", str(folder), "--out", str(tmp_path / "a.oshc")]) == 0
    raw = (tmp_path / "a.oshc").read_bytes()
    (tmp_path / "cut.oshc").write_bytes(raw[: len(raw) // 2])
    assert main(["unpack", str(tmp_path / "cut.oshc"), "--out", str(tmp_path / "o")]) == 2
    assert "truncated" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()

    assert main(["pack", str(tmp_path / "missing"), "--out", str(tmp_path / "m.oshc")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["pack", str(tmp_path / "junk.oshc"), "--out", str(tmp_path / "m.oshc")]) == 2
    assert "not a readable uncompressed tar" in capsys.readouterr().err
