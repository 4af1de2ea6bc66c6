"""The metric stage's opening screen: every row-canonical class, promoted by fidelity."""

import math

import numpy as np
import pytest
from search_fakes import ShipsAsScored
from tiny_models import tiny_engine

from optishear.config import SearchConfig
from optishear.core.genome import WANDA_GENOME, Genome, canonical_genomes
from optishear.recipe.candidates import Evaluation
from optishear.search.evaluator import InProcessEvaluator
from optishear.search.layer_proxy import PROXY_COST
from optishear.search.loop import run_search


class FakeEvaluator(ShipsAsScored):
    """Deterministic errors; a screening rung sees a noisy version of the full error."""

    block_params = (100, 100, 100, 100)

    def __init__(self) -> None:
        self.calls: list[tuple[int, int | None, int | None]] = []

    def evaluate(self, candidates, n_samples=None, n_tokens=None):
        out = []
        for c in candidates:
            self.calls.append((c.genome.row_canonical().index, n_samples, n_tokens))
            g = c.genome.row_canonical()
            err = 1.0 + abs(g.f1 - 1) + 0.5 * g.f2 + 0.1 * g.beta + 0.05 * abs(g.h - 2)
            if n_samples is not None:  # fewer tokens: the ranking is blurred, not lost
                err += 0.02 * ((g.index * 7919) % 13) / (n_samples * (n_tokens or 64) / 64)
            out.append(Evaluation(err, float(np.mean(c.block_sparsity)), n_samples or 8, 0.0))
        return out

    def layer_errors(self, candidates):
        """The layer-wise proxy: the 1 x 64 rung's ranking, blurred further."""
        low = self.evaluate(candidates, 1, 64)
        del self.calls[-len(candidates) :]
        self.calls += [(c.genome.row_canonical().index, 0, 0) for c in candidates]
        return [
            Evaluation(e.error + 0.01 * (c.genome.row_canonical().index % 5), 0.5, 0, 0.0)
            for c, e in zip(candidates, low, strict=True)
        ]


def _config(**fields) -> SearchConfig:
    base = {"model": "tiny", "sparsity": 0.5, "population": 8, "generations": 2, "seed": 3}
    return SearchConfig(**{**base, "stages": "metric", **fields})


def test_every_class_is_screened_and_the_best_start_nsga3() -> None:
    ev = FakeEvaluator()
    config = _config(screen={"rungs": "1x64,2x128", "keep": 0.25})
    result = run_search(ev, config)
    rungs = [h for h in result.history if "screen_rung" in h]
    classes = canonical_genomes()
    assert [(h["classes"], h["promoted"]) for h in rungs] == [
        (len(classes), math.ceil(len(classes) / 4)),
        (math.ceil(len(classes) / 4), math.ceil(len(classes) / 16)),
    ]
    assert [h["generation"] for h in result.history] == [-2, -1, 1, 2]  # rungs, then NSGA-III
    assert config.total_generations() == len(result.history)
    first = [(i, n, t) for i, n, t in ev.calls if (n, t) == (1, 64)]
    assert sorted(i for i, _, _ in first) == [g.index for g in classes]  # each class once
    # the cost of a rung is in full-evaluation equivalents (64 of 256 tokens, 1 of 16)
    assert rungs[0]["cost"] == pytest.approx(len(classes) / 16 / 4)
    # the best class of the objective (f1=sqrt, f2=identity, beta=one, h=rho) is found
    assert result.recommended.candidate.genome.row_canonical() == Genome(1, 0, 0, 0, 2)
    # the first generation is Wanda plus the screen's best, at full fidelity
    full = {i for i, n, _ in ev.calls if n is None}
    assert {WANDA_GENOME.index, Genome(1, 0, 0, 0, 2).index} <= full


def test_a_layer_rung_scores_every_class_by_the_proxy_and_resumes() -> None:
    config = _config(screen={"rungs": "layers,1x64", "keep": 0.1})
    ev = FakeEvaluator()
    result = run_search(ev, config)
    classes = canonical_genomes()
    proxied = [i for i, n, t in ev.calls if (n, t) == (0, 0)]
    assert sorted(proxied) == [g.index for g in classes]  # every class, once
    screened = [i for i, n, t in ev.calls if (n, t) == (1, 64)]
    assert len(screened) == math.ceil(len(classes) / 10)  # only the proxy's best tenth
    rungs = [h for h in result.history if "screen_rung" in h]
    assert [(h["sequences"], h["tokens"], h["classes"]) for h in rungs] == [
        (0, 0, len(classes)),
        (1, 64, math.ceil(len(classes) / 10)),
    ]
    assert rungs[0]["cost"] == pytest.approx(len(classes) * PROXY_COST)
    assert result.recommended.candidate.genome.row_canonical() == Genome(1, 0, 0, 0, 2)

    class Stop(Exception):  # noqa: N818
        pass

    def stop(snap) -> None:
        raise Stop

    snaps = []
    with pytest.raises(Stop):
        run_search(FakeEvaluator(), config, on_generation=lambda s: (snaps.append(s), stop(s)))
    again = FakeEvaluator()
    assert isinstance(snaps[0].state, bytes)  # stored as plain data, read back
    resumed = run_search(again, config, resume_from=snaps[0].state)
    assert not [c for c in again.calls if (c[1], c[2]) == (0, 0)]  # the proxy is not rerun
    assert resumed.recommended == result.recommended


def test_the_screen_is_deterministic_and_resumes_rung_by_rung() -> None:
    config = _config(screen={"rungs": "1x64,2x256", "keep": 0.3})
    full = run_search(FakeEvaluator(), config)
    again = run_search(FakeEvaluator(), config)
    assert [h["best_error"] for h in again.history] == [h["best_error"] for h in full.history]
    assert again.front == full.front
    assert again.recommended == full.recommended

    class Stop(Exception):  # noqa: N818
        pass

    snaps = []

    def stop_after_first_rung(snap) -> None:
        snaps.append(snap)
        if snap.number == 1:
            raise Stop

    with pytest.raises(Stop):
        run_search(FakeEvaluator(), config, on_generation=stop_after_first_rung)
    assert snaps[0].progress.generation == -2
    assert snaps[0].record["screen_rung"] == 0
    ev = FakeEvaluator()
    resumed = run_search(ev, config, resume_from=snaps[0].state)
    assert resumed.front == full.front
    assert resumed.recommended == full.recommended
    assert [h["best_error"] for h in resumed.history] == [h["best_error"] for h in full.history]
    assert not [c for c in ev.calls if (c[1], c[2]) == (1, 64)]  # the first rung is not rerun


def test_seed_genomes_start_the_search_and_first_order_spaces_skip_h() -> None:
    seed = Genome.parse("f1=square,f2=log,beta=inv_col_sum")
    ev = FakeEvaluator()
    run_search(
        ev, _config(metric_space="first_order", screen={"rungs": "1x64"}, seed_genomes=[seed])
    )
    assert all(Genome.from_index(i).h == 0 for i, _, _ in ev.calls)
    assert seed.row_canonical().index in {i for i, n, _ in ev.calls if n is None}
    screened = {i for i, n, t in ev.calls if (n, t) == (1, 64)}
    assert len(screened) == len(canonical_genomes(second_order=False)) == 324


@pytest.mark.slow  # 10-30 s: in `make test-all`
def test_a_real_screen_scores_every_class_finite_and_beats_wanda() -> None:
    engine, _, _ = tiny_engine()
    config = _config(
        population=4,
        generations=1,
        calibration={"n_samples": 8, "seq_len": 24},
        screen={"rungs": "1x8", "keep": 0.01},
        rescore_top=2,
    )
    result = run_search(InProcessEvaluator(engine), config)
    first = result.history[0]
    assert first["classes"] == len(canonical_genomes())
    wanda = next(b for b in result.baselines if b.name == "Wanda")
    assert math.isfinite(result.recommended.evaluation.error)
    assert result.recommended.evaluation.error <= wanda.evaluation.error + 1e-9


def test_a_budget_spent_by_the_screen_still_runs_one_generation() -> None:
    result = run_search(FakeEvaluator(), _config(generations=5, max_evaluations=1.0))
    assert [h["generation"] for h in result.history] == [-2, -1, 1]
    assert result.recommended.evaluation.n_samples == 8  # at full fidelity
