import json
import os
import tarfile

import pytest
import torch
from tiny_models import build_tiny, tiny_tokenizer
from transformers import AutoModelForCausalLM

from optishear.artifacts.export import (
    MANIFEST_NAME,
    export_checkpoint,
    measured_sparsity,
    write_archive,
)
from optishear.config import PruneConfig
from optishear.core.errors import ConfigError
from optishear.core.files import sha256_file
from optishear.core.patterns import Pattern
from optishear.recipe.prune import prune_model


@pytest.mark.parametrize("arch", ["llama", "opt", "gemma3"])
def test_exported_checkpoint_reloads_with_same_logits(arch, tmp_path, calib_ids) -> None:
    model = build_tiny(arch)
    report = prune_model(
        model, calib_ids, PruneConfig(method="wanda", sparsity=0.5, pattern=Pattern(2, 4))
    )
    out = tmp_path / "ckpt"
    manifest = export_checkpoint(
        model, tiny_tokenizer(), out, {"prune": report.to_dict()}, max_shard_size="100KB"
    )
    assert len([f for f in manifest["files"] if f.endswith(".safetensors")]) > 1  # sharded
    config = json.loads((out / "config.json").read_text())
    assert "sparsity_config" not in config
    assert "quantization_config" not in config
    on_disk = json.loads((out / MANIFEST_NAME).read_text())
    for name, meta in on_disk["files"].items():
        assert sha256_file(out / name) == meta["sha256"]
    assert on_disk["measured_sparsity"]["overall"] == 0.5

    reloaded = AutoModelForCausalLM.from_pretrained(out).eval()
    with torch.no_grad():
        a = model(calib_ids, use_cache=False).logits
        b = reloaded(calib_ids, use_cache=False).logits
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert measured_sparsity(reloaded)["overall"] == 0.5


def test_export_refuses_non_empty_folder(tmp_path) -> None:
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "keep.txt").write_text("user data")
    with pytest.raises(ConfigError, match="not empty"):
        export_checkpoint(build_tiny(), None, tmp_path / "x", {})
    assert (tmp_path / "x" / "keep.txt").read_text() == "user data"
    assert [p.name for p in tmp_path.iterdir()] == ["x"]  # no staging folder left behind


def test_archive_of_the_same_weights_is_byte_identical(tmp_path, calib_ids) -> None:
    model = build_tiny()
    prune_model(model, calib_ids, PruneConfig(method="wanda", sparsity=0.5))
    sums = []
    for i, when in enumerate((1_000_000, 2_000_000)):  # two exports, at different times
        folder = tmp_path / str(i) / "optishear-7-uniform"
        export_checkpoint(model, tiny_tokenizer(), folder, {"candidate": {"key": "7-uniform"}})
        for p in [folder, *folder.rglob("*")]:
            os.utime(p, (when, when))
        sums.append(write_archive(folder, tmp_path / f"{i}.tar"))
    assert sums[0] == sums[1]
    assert sums[0][1] == (tmp_path / "0.tar").stat().st_size
    with tarfile.open(tmp_path / "0.tar") as tar:
        members = tar.getmembers()
    names = [m.name for m in members]
    assert names[0] == "optishear-7-uniform"
    assert names == sorted(names, key=lambda n: n.split("/"))
    assert {(m.mtime, m.uid, m.gid, m.uname, m.gname) for m in members} == {(0, 0, 0, "", "")}
    assert "optishear-7-uniform/model.safetensors" in names
