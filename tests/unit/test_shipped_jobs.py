"""A comparing search prunes each published baseline once: its error as shipped and its
held-out row come from the same pruned weights, and the rows match a fresh measurement; at an
unstructured target OWL+SparseGPT's row comes from its as-shipped prune too."""

import pytest
import torch
from tiny_models import VOCAB, tiny_engine

from optishear.config import EvaluationConfig, SearchConfig
from optishear.recipe import comparison
from optishear.recipe.comparison import baseline_config
from optishear.search import fitness
from optishear.search.evaluator import InProcessEvaluator
from optishear.search.finish import BaselinePlans, baseline_recipes
from optishear.search.loop import run_search


def _counting(monkeypatch, module, calls):
    real = module.prune_model

    def counted(*args, **kwargs):
        calls.append(module.__name__)
        return real(*args, **kwargs)

    monkeypatch.setattr(module, "prune_model", counted)


@pytest.mark.parametrize("fallback", [True, False])
def test_each_baseline_is_pruned_once_for_both_measures(monkeypatch, fallback: bool) -> None:
    engine, _, _ = tiny_engine(second_order=False)
    evaluation = EvaluationConfig(seq_len=24, windows=4, batch_size=2)
    ids = torch.randint(0, VOCAB, (4 * 24,), generator=torch.Generator().manual_seed(5))
    config = SearchConfig(
        model="tiny",
        sparsity=0.5,
        population=4,
        generations=1,
        stages="metric",
        metric_space="first_order",
        screen={"rungs": "off"},
        calibration={"n_samples": 8, "seq_len": 24},
        compare_baselines=True,
        fallback_baselines=fallback,
        evaluation=evaluation,
    )
    calls: list[str] = []
    _counting(monkeypatch, fitness, calls)
    _counting(monkeypatch, comparison, calls)
    result = run_search(InProcessEvaluator(engine), config, held_out_ids=ids)
    assert result.held_out is not None
    rows = {r.name: r for r in result.held_out.rows}
    owl = ["owl+sparsegpt"] if fallback else []  # only the as-shipped scoring prunes it
    assert list(rows) == ["dense", "searched", "wanda", "sparsegpt", *owl]
    # as shipped: every finalist and baseline, each measured on the held-out windows on the
    # same prune, so whichever ships has its row; held-out prunes of their own only without
    # fallbacks (Wanda's and SparseGPT's); every prune is the engine's, as shipped
    shipped_scores = len(result.finalists) + len(result.fallbacks)
    again = 0 if fallback else 2
    recipe = result.recipe
    assert calls.count("optishear.search.fitness") == shipped_scores + again
    assert calls.count("optishear.recipe.comparison") == 0
    for name in ("wanda", "sparsegpt"):  # as a fresh measurement gives them
        fresh = engine.held_out_row(name, baseline_config(name, config), evaluation, ids)
        assert rows[name].perplexity == pytest.approx(fresh.perplexity, rel=1e-6)
        assert rows[name].window_nll == pytest.approx(fresh.window_nll, rel=1e-6)
    if fallback:
        evaluator = InProcessEvaluator(engine)
        plans = BaselinePlans.of(config, evaluator)
        owl_recipe = next(r for n, _, r in baseline_recipes(config, plans) if n == "OWL+SparseGPT")
        fresh = engine.held_out_row("owl+sparsegpt", owl_recipe, evaluation, ids)
        assert rows["owl+sparsegpt"].perplexity == pytest.approx(fresh.perplexity, rel=1e-6)
        assert set(result.held_out.gains) == {"wanda", "sparsegpt", "owl+sparsegpt"}
    dense = engine.held_out_row("dense", None, evaluation, ids)
    assert rows["dense"].perplexity == pytest.approx(dense.perplexity, rel=1e-9)
    fresh = engine.held_out_row("searched", recipe, evaluation, ids)
    # 3e-6 apart on 2026-12-07 (transformers 5.25, one thread or two): float32 rounding of
    # another evaluation order, not another model; the baselines' rows above stay within 1e-6
    assert rows["searched"].perplexity == pytest.approx(fresh.perplexity, rel=1e-5)


@pytest.mark.parametrize("fallback", [True, False])
def test_dense_exceptions_compare_with_the_hand_run_n_m_prunes(fallback: bool) -> None:
    """2:4 at 0.45 (some layers left dense): Wanda's and SparseGPT's rows are the 2:4 prunes a
    user runs by hand, at 0.5 (from the as-shipped batch, or pruned for the comparison without
    fallbacks), and their sparsity says so."""
    engine, _, _ = tiny_engine(second_order=False)
    evaluation = EvaluationConfig(seq_len=24, windows=4, batch_size=2)
    ids = torch.randint(0, VOCAB, (4 * 24,), generator=torch.Generator().manual_seed(5))
    config = SearchConfig(
        model="tiny",
        pattern="2:4",
        sparsity=0.45,
        population=4,
        generations=1,
        stages="allocation",
        calibration={"n_samples": 8, "seq_len": 24},
        compare_baselines=True,
        fallback_baselines=fallback,
        evaluation=evaluation,
    )
    result = run_search(InProcessEvaluator(engine), config, held_out_ids=ids)
    assert result.held_out is not None
    rows = {r.name: r for r in result.held_out.rows}
    assert list(rows) == ["dense", "searched", "wanda", "sparsegpt"]
    # a fallback (N:M everywhere) may ship, sparser than asked; the search's own is at 0.45
    assert rows["searched"].sparsity == pytest.approx(0.5 if fallback else 0.45, abs=0.05)
    for name in ("wanda", "sparsegpt"):
        assert rows[name].sparsity == pytest.approx(0.5)
        fresh = engine.held_out_row(name, baseline_config(name, config), evaluation, ids)
        assert rows[name].perplexity == pytest.approx(fresh.perplexity, rel=1e-6)
