"""Block streaming gives what the resident model gives: the same masks, errors and weights."""

from __future__ import annotations

import copy

import pytest
import torch
from tiny_models import VOCAB, build_tiny, shipped_recipe

from optishear.config import EvaluationConfig, PruneConfig
from optishear.core.genome import Genome
from optishear.core.patterns import Pattern
from optishear.evaluation.perplexity import perplexity
from optishear.model.blocks import capture_block_inputs, decoder_blocks
from optishear.model.streaming import BlockStreamer, choose_execution, onloaded
from optishear.recipe.candidates import Candidate
from optishear.recipe.prune import prune_model
from optishear.search.fitness import FitnessEngine

CPU = torch.device("cpu")


def _ids(n: int = 8, seq: int = 24, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, VOCAB, (n, seq), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize(
    ("method", "pattern", "extra"),
    [
        ("wanda", "unstructured", {}),
        ("wanda", "2:4", {"reconstruct": True}),
        ("sparsegpt", "unstructured", {}),
        ("magnitude", "4:8", {}),
    ],
)
@pytest.mark.parametrize("arch", ["llama", "opt"])
def test_streaming_prunes_exactly_as_resident(arch, method, pattern, extra) -> None:
    resident, streamed = build_tiny(arch), build_tiny(arch)
    config = PruneConfig(method=method, sparsity=0.5, pattern=pattern, batch_size=4, **extra)
    ids = _ids()
    a = prune_model(resident, ids, config)
    streamer = BlockStreamer(streamed, CPU)
    b = prune_model(streamed, ids, config)
    # the device never held more than one block's weights at once
    assert streamer.peak_onloaded_bytes == streamer.largest_block_bytes
    assert streamer.onloaded_bytes == 0
    ev = EvaluationConfig(seq_len=24, windows=4)
    stream = _ids(1, 200, seed=7)[0]
    assert (
        perplexity(streamed, stream, ev).perplexity == perplexity(resident, stream, ev).perplexity
    )
    streamer.close()
    assert a.achieved == b.achieved
    assert a.layers == b.layers
    for (name, x), (_, y) in zip(
        resident.state_dict().items(), streamed.state_dict().items(), strict=True
    ):
        assert torch.equal(x, y), name


def test_blocks_live_on_the_host_and_visit_the_device_only_while_they_run() -> None:
    model = build_tiny("llama")
    dense = copy.deepcopy(model)
    streamer = BlockStreamer(model, CPU)
    block = decoder_blocks(model)[1]
    host = [p.data_ptr() for p in block.parameters()]
    seen: list[list[int]] = []
    # runs after the streamer's own pre-hook: what the block computes with
    handle = block.register_forward_pre_hook(
        lambda m, _a: seen.append([p.data_ptr() for p in m.parameters()])
    )
    with torch.no_grad():
        out = model(_ids(2)).logits
        assert torch.equal(out, dense(_ids(2)).logits)
    handle.remove()
    assert seen
    assert not set(seen[0]) & set(host)  # it ran on a copy of its own
    assert [p.data_ptr() for p in block.parameters()] == host  # and the copy was dropped
    # a pass that our capture hooks stop early (by an exception) drops its copies too
    capture_block_inputs(model, _ids(2), 2)
    assert [p.data_ptr() for p in block.parameters()] == host
    # work inside `onloaded` holds the copy; with write=True its changes reach the host
    with onloaded(block, write=True):
        assert [p.data_ptr() for p in block.parameters()] != host
        block.mlp.down_proj.weight.data.zero_()
    assert [p.data_ptr() for p in block.parameters()] == host
    assert not block.mlp.down_proj.weight.any()
    with onloaded(block):  # without write, changes are dropped
        block.mlp.up_proj.weight.data.zero_()
    assert block.mlp.up_proj.weight.any()
    streamer.close()
    assert all(p.device.type == "cpu" for p in model.parameters())


def test_auto_keeps_a_model_resident_unless_it_does_not_fit(monkeypatch) -> None:
    assert choose_execution("auto", 10**12, CPU).mode == "resident"
    assert choose_execution("streaming", 1, CPU).describe() == "execution: streaming (as asked)"
    gpu = torch.device("cuda", 0)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda _d: (100 * 2**30, 141 * 2**30))
    assert choose_execution("auto", 14 * 2**30, gpu).mode == "resident"
    big = choose_execution("auto", 140 * 2**30, gpu)
    assert big.mode == "streaming"
    assert "140.0 GiB of weights do not fit" in big.reason
    assert choose_execution("resident", 140 * 2**30, gpu).mode == "resident"


@pytest.mark.parametrize("pattern", ["unstructured", "2:4"])
def test_a_streamed_engine_scores_candidates_as_a_resident_one(pattern) -> None:
    ids = _ids(8, 24)
    engines = []
    streamer = None
    for mode in ("resident", "streaming"):
        model = build_tiny("llama", layers=4)
        if mode == "streaming":
            streamer = BlockStreamer(model, CPU)
        engines.append(
            FitnessEngine(model, ids, Pattern.parse(pattern), batch_size=4, second_order=True)
        )
    resident, streamed = engines
    ratio = 0.5
    for genome in (Genome(), Genome.parse("f1=sqrt,beta=inv_col_sum")):
        cand = Candidate(genome, (ratio,) * 4)
        for kw in ({}, {"n_tokens": 8}):
            a, b = resident.evaluate(cand, **kw), streamed.evaluate(cand, **kw)
            assert (a.error, a.sparsity) == (b.error, b.sparsity), kw
        for update in ("none", "obs", "lstsq"):  # as shipped
            recipe = shipped_recipe(resident, cand, update)
            a, b = resident.evaluate_shipped(recipe), streamed.evaluate_shipped(recipe)
            assert (a.error, a.sparsity) == (b.error, b.sparsity), update
    if pattern == "unstructured":
        assert resident.owl_plan(0.5) == streamed.owl_plan(0.5)
    assert streamer is not None
    assert streamer.peak_onloaded_bytes == streamer.largest_block_bytes


def test_a_streamed_engine_does_not_copy_the_blocks_a_candidate_skips(monkeypatch) -> None:
    ids = _ids(8, 24)
    model = build_tiny("llama", layers=4)
    streamer = BlockStreamer(model, CPU)
    engine = FitnessEngine(model, ids, Pattern(), batch_size=4)
    entered: list[int] = []
    enter = streamer._enter
    monkeypatch.setattr(streamer, "_enter", lambda i: (entered.append(i), enter(i))[1])
    engine.evaluate(Candidate(Genome(), (0.5,) * 4))
    assert sorted(set(entered)) == [0, 1, 2, 3]
    entered.clear()
    child = engine.evaluate(Candidate(Genome(), (0.5, 0.5, 0.5, 0.6)))  # blocks 0-2 skipped
    assert set(entered) == {3}
    assert streamer.onloaded_bytes == 0  # every block back on the host
    resident = FitnessEngine(build_tiny("llama", layers=4), ids, Pattern(), batch_size=4)
    assert child.error == resident.evaluate(Candidate(Genome(), (0.5, 0.5, 0.5, 0.6))).error
