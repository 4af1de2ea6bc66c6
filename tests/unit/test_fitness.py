"""The fitness engine: its errors are the real model's, as masked and as shipped."""

import copy

import pytest
import torch
from tiny_models import build_tiny, shipped_recipe, tiny_engine

from optishear.config import PlanConfig, PruneConfig
from optishear.core.genome import Genome
from optishear.core.patterns import Pattern
from optishear.model.blocks import capture_block_inputs, iter_linears
from optishear.recipe.candidates import Candidate
from optishear.recipe.prune import collect_dense_stats, prune_model
from optishear.search.fitness import FitnessEngine


@pytest.mark.parametrize("objective", ["kl", "logits_fro"])
def test_engine_error_equals_full_logits_and_restores_weights(objective) -> None:
    engine, _, ids = tiny_engine(objective=objective)
    before = [lin.weight.clone() for _, _, lin in engine.layers]
    genome = Genome.parse("f1=sqrt,beta=inv_col_sum")
    e = engine.evaluate(Candidate(genome, (0.4, 0.5, 0.5, 0.6)))
    assert all(
        torch.equal(b, lin.weight) for b, (_, _, lin) in zip(before, engine.layers, strict=True)
    )
    ref = build_tiny("llama", layers=4)
    with torch.no_grad():
        dense = ref(ids, use_cache=False).logits
    prune_model(
        ref,
        ids,
        PruneConfig(
            method="meta",
            sparsity=0.5,
            genome=genome,
            stats="dense",
            plan=PlanConfig(kind="explicit", block_sparsity=(0.4, 0.5, 0.5, 0.6)),
        ),
    )
    with torch.no_grad():
        pruned = ref(ids, use_cache=False).logits
    if objective == "logits_fro":
        expected = float((dense - pruned).norm() / dense.norm())
    else:
        log_p, log_q = dense.log_softmax(-1), pruned.log_softmax(-1)
        expected = float((log_p.exp() * (log_p - log_q)).sum(-1).mean())
    assert e.error == pytest.approx(expected, rel=1e-4)
    assert e.sparsity == 0.5


def test_layer_masks_are_reused_across_candidates_and_give_identical_errors() -> None:
    engine, _, _ = tiny_engine()
    genome = Genome.parse("f1=sqrt")
    a = Candidate(genome, (0.4, 0.5, 0.5, 0.6))
    b = Candidate(genome.parse("alpha=inv_row_sum,f1=sqrt"), (0.45, 0.5, 0.5, 0.55))
    first = engine.evaluate(a)
    cached = len(engine._masker.cache)
    assert cached == len(engine.layers)
    # b shares the row-equivalent genome and blocks 1 and 2: only blocks 0 and 3 are new masks
    per_block = cached // 4
    engine.evaluate(b)
    assert len(engine._masker.cache) == cached + 2 * per_block
    again = engine.evaluate(a)
    engine.clear_mask_cache()
    fresh = engine.evaluate(a)
    assert first.error == again.error == fresh.error


def test_engine_error_as_shipped_is_the_error_of_the_final_prune() -> None:
    engine, model, ids = tiny_engine()
    dense = copy.deepcopy(model)
    genome = Genome.parse("f1=sqrt,alpha=inv_col_sum")
    cand = Candidate(genome, (0.5,) * 4)
    recipe = shipped_recipe(engine, cand)
    e = engine.evaluate_shipped(recipe)
    assert e.error != pytest.approx(engine.evaluate(cand).error, rel=1e-6)  # other statistics
    assert engine.evaluate_shipped(recipe).error == pytest.approx(e.error, rel=1e-9)
    # pruned in place, then read back from the backup: the dense weights, bit for bit
    assert all(
        torch.equal(lin.weight, ref.weight)
        for (_, _, lin), (_, _, ref) in zip(engine.layers, iter_linears(dense), strict=True)
    )
    # the KL to the dense model of the model `optishear prune` ships, computed directly
    shipped_model = copy.deepcopy(dense)
    prune_model(
        shipped_model, ids, PruneConfig(method="meta", sparsity=0.5, genome=genome, batch_size=4)
    )
    with torch.no_grad():
        log_p = torch.log_softmax(dense(ids).logits.double(), -1)
        log_q = torch.log_softmax(shipped_model(ids).logits.double(), -1)
    kl = float((log_p.exp() * (log_p - log_q)).sum(-1).mean())
    # Both sides make float32 logits; a KL this small (about 4e-4) carries a few 1e-8 of their
    # rounding (4.2e-8 with transformers 5.24, where rel=1e-4 alone would be 4.2e-8 wide).
    assert e.error == pytest.approx(kl, rel=1e-4, abs=1e-7)
    assert e.sparsity == pytest.approx(0.5, abs=1e-9)


def test_engine_can_score_with_the_statistics_of_wandas_pruned_model() -> None:
    engine, model, ids = tiny_engine(Pattern(2, 4))
    dense_model = copy.deepcopy(model)
    baseline = FitnessEngine(
        model, ids, Pattern(2, 4), batch_size=4, stats="baseline", sparsity=0.5
    )
    # the weights are dense again, and the dense reference is the same
    assert all(
        torch.equal(lin.weight, ref.weight)
        for (_, _, lin), (_, _, ref) in zip(baseline.layers, iter_linears(dense_model), strict=True)
    )
    assert torch.equal(baseline.reference, engine.reference)
    # the statistics are those of the model Wanda prunes, block by block
    wanda = copy.deepcopy(dense_model)
    prune_model(
        wanda, ids, PruneConfig(method="wanda", sparsity=0.5, pattern=Pattern(2, 4), batch_size=4)
    )
    stats = collect_dense_stats(wanda, capture_block_inputs(wanda, ids, 4))
    for (idx, name, _), act in zip(baseline.layers, baseline.act_sq, strict=True):
        assert torch.allclose(act, stats[idx][name].act_sq, rtol=1e-5)
    assert any(
        not torch.allclose(a, b) for a, b in zip(baseline.act_sq, engine.act_sq, strict=True)
    )
    genome = Genome.parse("alpha=inv_col_sum")
    cand = Candidate(genome, (0.5,) * 4)
    assert baseline.evaluate(cand).error != pytest.approx(engine.evaluate(cand).error, rel=1e-6)
    # shipped errors do not depend on how the engine scores masks
    recipe = shipped_recipe(engine, cand)
    assert baseline.evaluate_shipped(recipe).error == pytest.approx(
        engine.evaluate_shipped(recipe).error, rel=1e-6
    )


def test_baseline_statistics_leave_owl_on_dense_statistics() -> None:
    engine, model, ids = tiny_engine()
    baseline = FitnessEngine(model, ids, Pattern(), batch_size=4, stats="baseline", sparsity=0.5)
    assert baseline.owl_plan(0.5) == pytest.approx(engine.owl_plan(0.5), abs=1e-12)
