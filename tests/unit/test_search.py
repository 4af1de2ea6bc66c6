from dataclasses import replace

import numpy as np
import pytest
import torch
from pydantic import ValidationError
from search_fakes import ShipsAsScored, candidate_of
from tiny_models import build_tiny, shipped_recipe, tiny_engine

from optishear.config import PlanConfig, PruneConfig, SearchConfig, config_error
from optishear.core.errors import ConfigError
from optishear.core.genome import Genome
from optishear.core.patterns import Pattern
from optishear.recipe.candidates import Candidate, Evaluation
from optishear.recipe.prune import prune_model
from optishear.search.evaluator import InProcessEvaluator
from optishear.search.loop import run_search
from optishear.search.space import SearchSpace, balance_offsets


class FakeEvaluator(ShipsAsScored):
    """A cheap, deterministic objective: prefers sqrt(|W|) and sparser late blocks."""

    block_params = (100, 100, 100, 100, 100, 100)

    def __init__(self) -> None:
        self.calls: list[Candidate] = []

    def evaluate(self, candidates, n_samples=None, n_tokens=None):
        self.calls += candidates
        out = []
        for c in candidates:
            g = c.genome.row_canonical()
            err = abs(g.f1 - 1) + abs(g.f2 - 0) * 0.5 + g.beta * 0.1
            # late blocks sparser
            err -= sum((r - 0.5) * (i - 2.5) for i, r in enumerate(c.block_sparsity))
            out.append(Evaluation(1.0 + err, float(np.mean(c.block_sparsity)), n_samples or 8, 0.0))
        return out


def _config(**fields) -> SearchConfig:
    """NSGA-III alone: the opening screen is tested in test_screen.py."""
    return SearchConfig(model="tiny", **{"screen": {"rungs": "off"}, **fields})


def _front(result):
    return [(s.candidate, s.evaluation.error, s.gap) for s in result.front]


def test_search_with_fake_evaluator_meets_target_and_improves() -> None:
    ev = FakeEvaluator()
    result = run_search(ev, _config(sparsity=0.5, population=12, generations=6, seed=1))
    rec = result.recommended
    assert rec.meets_target
    assert np.mean(rec.candidate.block_sparsity) == pytest.approx(0.5, abs=1e-12)
    assert rec.candidate.genome.names()["f1"] == "sqrt"
    assert rec.candidate.block_sparsity[-1] > rec.candidate.block_sparsity[0]
    assert [h["stage"] for h in result.history] == ["metric"] * 6 + ["layerwise"] * 6
    assert result.cache_hits > 0
    assert len({c.key() for c in ev.calls}) == len(ev.calls)  # nothing evaluated twice
    baseline = ev.evaluate([Candidate(Genome(), (0.5,) * 6)])[0].error
    assert rec.evaluation.error < baseline


def test_equivalent_genomes_are_evaluated_once() -> None:
    ev = FakeEvaluator()
    from optishear.search.loop import _Search
    from optishear.search.state import SearchState

    config = _config(sparsity=0.5)
    search = _Search(ev, config, SearchState(config.resume_identity()), None)
    plan = (0.5,) * 6
    same = [
        Genome.parse("alpha=inv_row_sum"),
        Genome.parse("alpha=inv_fro"),
        Genome(),
        Genome.parse("f1=softmax"),
        Genome.parse("f1=exp"),
    ]
    search.evaluate([Candidate(g, plan) for g in same])
    assert len(ev.calls) == 2  # {wanda, row-normalised wanda...} and {softmax, exp}


def test_balance_offsets_meets_target_with_unequal_blocks() -> None:
    rng = np.random.default_rng(0)
    w = np.array([1.0, 1, 2, 2, 1, 1])
    for _ in range(200):
        o = rng.integers(-1, 2, size=6)
        b = balance_offsets(o, w, 1, rng)
        assert np.dot(b, w) == 0
        assert np.abs(b).max() <= 1


def test_search_is_deterministic_and_resume_equals_uninterrupted(tmp_path) -> None:
    engine, _, _ = tiny_engine()
    settings = _config(sparsity=0.5, population=8, generations=3, seed=3)
    a = run_search(InProcessEvaluator(engine), settings)
    b = run_search(InProcessEvaluator(engine), settings)
    assert _front(a) == _front(b)

    class Interrupt(Exception):  # noqa: N818
        pass

    def stop_after_4(p):
        if p.stage_index == 1 and p.generation == 1:
            raise Interrupt

    state = tmp_path / "state.json"
    with pytest.raises(Interrupt):
        run_search(InProcessEvaluator(engine), settings, state_path=state, progress=stop_after_4)
    assert state.is_file()
    resumed = run_search(InProcessEvaluator(engine), settings, state_path=state, resume=True)
    assert _front(resumed) == _front(a)
    assert [h["best_error"] for h in resumed.history] == [h["best_error"] for h in a.history]

    with pytest.raises(ConfigError, match="different search"):
        run_search(
            InProcessEvaluator(engine),
            _config(sparsity=0.5, population=8, seed=4),
            state_path=state,
            resume=True,
        )


def test_refit_step_rescores_the_best_candidates_as_shipped() -> None:
    engine, _, _ = tiny_engine()
    before = [lin.weight.clone() for _, _, lin in engine.layers]
    settings = _config(sparsity=0.5, population=4, generations=1, seed=3, refit_top=2)
    result = run_search(InProcessEvaluator(engine), settings)
    assert 1 <= len(result.refitted) <= 3  # the 2 best and the stage's baseline
    assert result.recommended is result.refitted[0]
    assert not result.rescored
    errors = [s.evaluation.error for s in result.refitted]
    assert errors == sorted(errors)
    for s in result.refitted:
        assert s.meets_target
        mask_only = next(f for f in result.finalists if f.candidate == s.candidate)
        assert s.evaluation.error < mask_only.evaluation.error  # the refit pays off
    # the refit error is reproducible from the shipped recipe and leaves the weights dense
    assert result.recipe is not None
    recipe = result.recipe.model_copy(update={"batch_size": engine.batch_size})
    assert recipe == shipped_recipe(engine, result.recommended.candidate, "lstsq")
    again = engine.evaluate_shipped(result.recipe)
    assert again.error == pytest.approx(result.recommended.evaluation.error, rel=1e-6)
    assert again.sparsity == pytest.approx(0.5, abs=1e-9)
    assert all(
        torch.equal(b, lin.weight) for b, (_, _, lin) in zip(before, engine.layers, strict=True)
    )
    assert "refit by least squares" in result.to_dict()["summary"]["selection_rule"]


class ShippedDiffers(FakeEvaluator):
    """As shipped, the engine's ranking is reversed: its best candidate ships worst."""

    BASELINE_ERROR = 100.0  # the published baselines lose

    def __init__(self) -> None:
        super().__init__()
        self.shipped_calls: list[list[PruneConfig]] = []

    def shipped(self, recipes, progress=None):
        self.shipped_calls.append(list(recipes))
        return [
            e if r.method != "meta" else replace(e, error=10.0 - e.error)
            for r, e in zip(recipes, super().shipped(recipes, progress), strict=True)
        ]


def test_rescore_step_ships_the_best_finalist_as_shipped_and_lists_it() -> None:
    ev = ShippedDiffers()
    settings = _config(
        sparsity=0.5, pattern=Pattern(2, 4), population=8, generations=2, rescore_top=3
    )
    result = run_search(ev, settings)
    recipes = [r for call in ev.shipped_calls for r in call]  # asked for a few at a time
    searched = [r for r in recipes if r.method == "meta"]
    assert not any(r.reconstruct or r.obs_update for r in searched)  # masks only, as scored
    keys = [candidate_of(r, 6).key() for r in searched]
    assert len(keys) == len(set(keys)) in (3, 4)
    wanda = Candidate(Genome(), (0.5,) * 6)
    assert wanda.key() in keys  # the stage's baseline is always a finalist
    # the three best by the engine's error, then Wanda if it was not among them
    engine_errors = [s.evaluation.error for s in result.finalists[:3]]
    assert engine_errors == sorted(engine_errors)
    assert engine_errors[0] == min(s.evaluation.error for s in result.front)
    # recommended: the lowest error as shipped, which the engine ranked last among them
    assert [s.evaluation.error for s in result.rescored] == sorted(
        s.evaluation.error for s in result.rescored
    )
    assert result.recommended is result.rescored[0]
    worst = max(result.finalists, key=lambda s: s.evaluation.error)
    assert result.recommended.candidate.key() == worst.candidate.key()
    # listed: the whole front, then the finalists off it, so the recommendation has a row
    listed = [s.candidate.key() for s in result.listed()]
    assert listed[: len(result.front)] == [s.candidate.key() for s in result.front]
    assert result.recommended.candidate.key() in listed
    assert len(listed) == len(set(listed))
    d = result.to_dict()
    assert "pruned as shipped" in d["summary"]["selection_rule"]
    assert [r["key"] for r in d["summary"]["rescored"]] == [
        s.candidate.label() for s in result.rescored
    ]


def test_rescore_step_on_a_real_engine_recommends_the_best_as_shipped() -> None:
    engine, _, _ = tiny_engine(Pattern(2, 4))
    settings = _config(
        sparsity=0.5,
        pattern=Pattern(2, 4),
        population=6,
        generations=2,
        rescore_top=2,
        fallback_baselines=False,
    )
    result = run_search(InProcessEvaluator(engine), settings)
    assert 2 <= len(result.rescored) <= 3
    for s in result.rescored:
        again = engine.evaluate_shipped(shipped_recipe(engine, s.candidate))
        assert again.error == pytest.approx(s.evaluation.error, rel=1e-9)
    assert result.recommended is result.rescored[0]


def test_screening_errors_never_pass_for_full_ones() -> None:
    class ScreeningScale(FakeEvaluator):
        """Screening errors on fewer sequences come out 10x smaller, as KL on other text may."""

        def __init__(self) -> None:
            super().__init__()
            self.full_errors: set[float] = set()

        def evaluate(self, candidates, n_samples=None, n_tokens=None):
            out = super().evaluate(candidates, n_samples)
            if n_samples is None:
                self.full_errors |= {e.error for e in out}
                return out
            return [Evaluation(e.error / 10, e.sparsity, e.n_samples, 0.0) for e in out]

    ev = ScreeningScale()
    settings = _config(
        sparsity=0.5,
        population=8,
        generations=4,
        seed=2,
        low_fidelity_samples=2,
        promote_fraction=0.25,
    )
    result = run_search(ev, settings)
    assert all(h["best_error"] in ev.full_errors for h in result.history)
    assert all(s.evaluation.error in ev.full_errors for s in result.front)


def test_low_fidelity_front_is_reported_at_full_fidelity() -> None:
    engine, _, _ = tiny_engine(Pattern(2, 4))
    result = run_search(
        InProcessEvaluator(engine),
        _config(
            sparsity=0.5,
            pattern=Pattern(2, 4),
            population=8,
            generations=3,
            low_fidelity_samples=2,
        ),
    )
    assert [h["stage"] for h in result.history] == ["metric"] * 3
    assert all(s.evaluation.n_samples == 8 for s in result.front)
    assert result.recommended.candidate.block_sparsity == (0.5,) * 4


def test_settings_validation() -> None:
    def invalid(**fields) -> str:
        with pytest.raises(ValidationError) as info:
            _config(**fields)
        return str(config_error(info.value))

    assert "only the metric" in invalid(sparsity=0.5, pattern=Pattern(2, 4), stages="layerwise")
    assert "prunes exactly" in invalid(sparsity=0.6, pattern=Pattern(2, 4))
    assert invalid(sparsity=0.5, population=2).startswith("population: ")
    assert "not both" in invalid(sparsity=0.5, refit_top=2, rescore_top=2)
    assert invalid(sparsity=0.5, rescore_top=-1).startswith("rescore_top: ")
    with pytest.raises(ConfigError, match="within"):
        SearchSpace("layerwise", 0.97, (1, 1), step=0.05)


def test_baselines_are_wanda_and_owl_at_the_target() -> None:
    engine, _, ids = tiny_engine()
    settings = _config(sparsity=0.5, population=4, generations=1, seed=3)
    result = run_search(InProcessEvaluator(engine), settings)
    by_name = {b.name: b for b in result.baselines}
    assert list(by_name) == ["Wanda", "OWL+Wanda"]
    wanda = by_name["Wanda"]
    assert wanda.candidate == Candidate(Genome(), (0.5,) * 4)
    assert wanda.evaluation.error == pytest.approx(engine.evaluate(wanda.candidate).error, rel=1e-9)
    owl = by_name["OWL+Wanda"]
    assert owl.candidate.genome == Genome()
    assert len(set(owl.candidate.block_sparsity)) > 1  # OWL spreads the sparsity over the blocks
    assert owl.gap == pytest.approx(0.0, abs=1e-6)
    assert owl.evaluation.n_samples == 8  # full fidelity
    assert owl.evaluation.error == pytest.approx(engine.evaluate(owl.candidate).error, rel=1e-9)
    # the same plan as `optishear prune --plan owl` gives this model
    config = PruneConfig(method="wanda", sparsity=0.5, plan=PlanConfig(kind="owl"), batch_size=4)
    report = prune_model(build_tiny("llama", layers=4), ids, config)
    assert owl.candidate.block_sparsity == pytest.approx(report.plan, abs=1e-9)
    assert [b["name"] for b in result.to_dict()["summary"]["baselines"]] == ["Wanda", "OWL+Wanda"]


def test_baselines_for_n_m_are_wanda_only() -> None:
    engine, _, _ = tiny_engine(Pattern(2, 4))
    result = run_search(
        InProcessEvaluator(engine),
        _config(sparsity=0.5, pattern=Pattern(2, 4), population=4, generations=1),
    )
    assert [b.name for b in result.baselines] == ["Wanda"]
    assert result.baselines[0].meets_target
    with pytest.raises(ConfigError, match="no OWL plan"):
        engine.owl_plan(0.5)


def test_baselines_of_an_evaluator_without_owl_reuse_the_cached_wanda() -> None:
    ev = FakeEvaluator()
    result = run_search(ev, _config(sparsity=0.5, population=6, generations=2, seed=1))
    assert [b.name for b in result.baselines] == ["Wanda"]
    assert len({c.key() for c in ev.calls}) == len(ev.calls)  # Wanda came from the cache


def test_generation_snapshots_carry_the_population_around_their_front() -> None:
    snaps = []
    run_search(
        FakeEvaluator(),
        _config(sparsity=0.5, population=6, generations=2, seed=1),
        on_generation=snaps.append,
    )
    assert len(snaps) == 4
    for snap in snaps:
        keys = [s.candidate.key() for s in snap.population]
        assert len(keys) == len(set(keys)) > 1
        assert {s.candidate.key() for s in snap.front} <= set(keys)
