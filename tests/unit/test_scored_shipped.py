"""Scored = shipped: the model the recommended recipe prunes has, on the validation sequences
(never fitted), the error the search reports for it, for every stage, database mode and update of the survivors;
and a published baseline that beats every candidate is recommended and shipped instead."""

from __future__ import annotations

import contextlib
import copy

import pytest
import torch
from search_fakes import FakeEvaluator, state_config
from tiny_models import VOCAB, build_tiny

from optishear.config import SearchConfig
from optishear.core.patterns import Pattern
from optishear.recipe.prune import prune_model
from optishear.search.engine_spec import engine_for
from optishear.search.evaluator import InProcessEvaluator
from optishear.search.loop import run_search

SMALL = {"population": 4, "generations": 1, "seed": 2, "screen": {"rungs": "off"}}
CASES = {
    "metric": {"stages": "metric", "metric_space": "first_order"},
    "metric-2:4": {"stages": "metric", "metric_space": "first_order", "pattern": Pattern(2, 4)},
    "metric-refit": {"stages": "metric", "metric_space": "first_order", "refit_top": 1},
    "metric-refit-holdout": {
        "stages": "metric",
        "metric_space": "first_order",
        "refit_top": 1,
        "refit_holdout": 2,
    },
    "layerwise": {"stages": "layerwise"},
    "allocation-masks": {"stages": "allocation", "allocation": {"database": "memory"}},
    "allocation-obs": {
        "stages": "allocation",
        "allocation": {"database": "memory", "refit": True},
    },
    "allocation-disk-obs": {
        "stages": "allocation",
        "allocation": {"database": "disk", "refit": True},
    },
    "allocation-sparsegpt": {
        "stages": "allocation",
        "allocation": {"database": "memory", "refit": True, "masks": "sparsegpt"},
    },
    "allocation-sparsegpt-2:4": {
        "stages": "allocation",
        "pattern": Pattern(2, 4),
        "sparsity": 0.4,
        "allocation": {"database": "memory", "refit": True, "masks": "sparsegpt"},
    },
    "allocation-refit": {
        "stages": "allocation",
        "allocation": {"database": "memory", "refit": True},
        "refit_top": 1,
    },
    "allocation-refit-holdout": {
        "stages": "allocation",
        "allocation": {"database": "memory", "refit": True},
        "refit_top": 1,
        "refit_holdout": 4,
    },
}


def _kl(dense: torch.nn.Module, pruned: torch.nn.Module, ids: torch.Tensor) -> float:
    """Mean token KL(dense || pruned) of the final logits, in float64: the search's error."""
    with torch.no_grad():
        log_p = torch.log_softmax(dense(ids).logits.double(), -1)
        log_q = torch.log_softmax(pruned(ids).logits.double(), -1)
    return float((log_p.exp() * (log_p - log_q)).sum(-1).mean())


@pytest.mark.parametrize("case", list(CASES))
def test_the_shipped_model_has_the_reported_error(case: str, tmp_path) -> None:
    config = SearchConfig(
        **{"model": "tiny", "sparsity": 0.5, "fitness_samples": 4, **SMALL, **CASES[case]}
    )
    model = build_tiny("llama", layers=4)
    dense = copy.deepcopy(model)
    ids = torch.randint(0, VOCAB, (8, 24), generator=torch.Generator().manual_seed(1))
    # validation sequences of their own: they score; the calibration fits (statistics, refits)
    valid = torch.randint(0, VOCAB, (6, 24), generator=torch.Generator().manual_seed(2))
    engine = engine_for(
        model, ids, config.model_copy(update={"batch_size": 4}), folder=tmp_path, valid_ids=valid
    )
    with contextlib.closing(InProcessEvaluator(engine)) as evaluator:
        result = run_search(evaluator, config)
    rec, recipe = result.recommended, result.recipe
    assert recipe is not None
    if rec.method is None:  # a searched candidate ships as the search scored it
        assert recipe.survivor_update == config.shipped_update()
        assert recipe.method == config.shipped_method()
        assert recipe.refit_holdout == config.refit_holdout
    # The model a user downloads: the recipe on a fresh copy of the dense model.
    shipped = copy.deepcopy(dense)
    report = prune_model(shipped, ids, recipe)
    assert rec.evaluation.n_samples == 4
    # float32 forwards on both sides: rounding of a few 1e-8 on a KL of about 1e-3, and up to
    # 1.4e-7 on a loaded machine, where MKL's dynamic threading splits sums differently
    error = _kl(dense, shipped, valid[:4])
    assert rec.evaluation.error == pytest.approx(error, rel=1e-4, abs=5e-7)
    assert error != pytest.approx(_kl(dense, shipped, ids[:4]), rel=1e-3)  # not calibration
    assert rec.evaluation.sparsity == pytest.approx(report.achieved, abs=1e-9)
    summary = result.summary()
    assert summary.shipped == recipe
    assert summary.recommended_key == rec.record().key
    assert rec.record().key in {s.record().key for s in result.listed()}
    # every baseline was scored as shipped beside the candidates; the lowest error won
    owl = ["OWL+SparseGPT", "OWL+Wanda"]
    if "allocation" in config.stage_list():  # the per-layer baseline with the refit too
        owl.insert(1, "OWL+Wanda+refit")
    assert [b.name for b in result.fallbacks] == (
        ["SparseGPT", "Wanda+refit", "Wanda"] + ([] if config.pattern.structured else owl)
    )
    finalists = [*result.refitted, *result.rescored]
    best = min(s.evaluation.error for s in [*finalists, *result.fallbacks] if s.meets_target)
    assert rec.evaluation.error == best
    assert bool(summary.fallback) == (rec.method is not None)


class BaselinesWin(FakeEvaluator):
    BASELINE_ERROR = -100.0  # below anything the fake's search finds


def test_a_baseline_that_beats_every_candidate_is_recommended_and_shipped() -> None:
    result = run_search(BaselinesWin(), state_config(stages="metric", generations=1))
    rec = result.recommended
    assert rec.method == "SparseGPT"  # the first of the equally good baselines
    assert result.recipe is not None
    assert result.recipe.method == "sparsegpt"
    assert result.recipe.sparsity == 0.5
    summary = result.summary()
    assert "no searched candidate beat SparseGPT" in summary.fallback
    assert summary.recommended_key == "sparsegpt-uniform"
    assert result.listed()[-1] is rec  # a row for the recommendation
    assert {s.record().key for s in result.front}.isdisjoint({"sparsegpt-uniform"})


def test_without_fallback_baselines_the_best_candidate_ships() -> None:
    config = state_config(stages="metric", generations=1, fallback_baselines=False)
    result = run_search(BaselinesWin(), config)
    assert result.recommended.method is None
    assert result.fallbacks == []
    assert result.summary().fallback == ""
