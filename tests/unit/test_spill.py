"""Hidden states past the memory budget live in an unlinked file, and prune the same."""

import sys
import tempfile
from pathlib import Path

import pytest
import torch
from tiny_models import ARCHS, build_tiny

from optishear.config import PruneConfig
from optishear.model.blocks import capture_block_inputs, decoder_blocks, run_block
from optishear.model.spill import hidden_buffer, spill_directory
from optishear.recipe.prune import prune_model


@pytest.fixture
def spill_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # what gettempdir() answers
    return tmp_path


def _anon_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no RssAnon")


def test_capture_spills_past_the_budget_and_outputs_follow(calib_ids, spill_dir) -> None:
    model = build_tiny("llama")
    kept = capture_block_inputs(model, calib_ids, 4)
    spilled = capture_block_inputs(model, calib_ids, 4, memory_bytes=0)
    assert spill_directory(kept.hidden) is None
    assert spill_directory(spilled.hidden) == spill_dir
    assert torch.equal(kept.hidden, spilled.hidden)
    block = decoder_blocks(model)[0]
    out = run_block(block, spilled.hidden, spilled.calls[0], spilled.batch_size)
    assert out is not None
    assert spill_directory(out) == spill_dir
    assert torch.equal(out, run_block(block, kept.hidden, kept.calls[0], kept.batch_size))
    assert list(spill_dir.iterdir()) == []  # unlinked once mapped: nothing is left behind


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize(
    "recipe",
    [
        {"method": "sparsegpt", "pattern": "2:4"},
        {"method": "wanda", "reconstruct": True, "refit_holdout": 4},
    ],
    ids=["sparsegpt", "wanda+refit"],
)
def test_a_spilled_prune_gives_the_same_weights(arch, recipe, calib_ids, spill_dir) -> None:
    weights = []
    for budget in (1.0, 0.0):
        model = build_tiny(arch)
        config = PruneConfig(sparsity=0.5, batch_size=4, hidden_memory_gib=budget, **recipe)
        prune_model(model, calib_ids, config)
        weights.append([p.detach().clone() for p in model.parameters()])
    assert all(torch.equal(a, b) for a, b in zip(*weights, strict=True))
    assert list(spill_dir.iterdir()) == []


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RssAnon: Linux")
def test_a_spilled_buffer_takes_no_anonymous_memory(spill_dir) -> None:
    shape = (64, 1024, 1024)  # 256 MiB of float32
    before = _anon_bytes()
    buf = hidden_buffer(shape, torch.float32, torch.device("cpu"), budget_bytes=0)
    for i in range(shape[0]):
        buf[i] = float(i)
    grown = _anon_bytes() - before
    assert float(buf[63, 5, 7]) == 63.0
    assert grown < 32 << 20, grown  # the pages are the file's, in the page cache
    kept = hidden_buffer(shape, torch.float32, torch.device("cpu"), budget_bytes=1 << 40)
    kept.fill_(1.0)
    assert _anon_bytes() - before > 200 << 20  # the same buffer in memory is anonymous
