"""A search driven without a model: a cheap deterministic objective, a small config, and a
generation callback that interrupts the search (the resume tests)."""

import numpy as np

from optishear.config import PruneConfig, SearchConfig
from optishear.recipe.candidates import Candidate, Evaluation

GENERATIONS = 4  # per stage; 'both' runs 2 stages: generations 1-4, then 5-8


class ShipsAsScored:
    """For a fake evaluator (its `block_params`, `evaluate` and `calls`): as shipped, a
    searched candidate scores as `evaluate` scored it, and a published baseline
    `BASELINE_ERROR`, worse than any search finds. Shipped scores are not recorded in `calls`.
    """

    BASELINE_ERROR = 5.0

    @property
    def layer_layout(self):
        return tuple((i, "linear", n) for i, n in enumerate(self.block_params))  # one per block

    def shipped(self, recipes, progress=None):
        recorded = len(self.calls)
        out = []
        for r in recipes:
            if r.method != "meta":
                out.append(Evaluation(self.BASELINE_ERROR, float(r.sparsity), 8, 0.0))
                continue
            [e] = self.evaluate([candidate_of(r, len(self.block_params))])
            out.append(e)
        del self.calls[recorded:]
        for e in out:
            if progress is not None:
                progress(e)
        return out


class FakeEvaluator(ShipsAsScored):
    """A cheap, deterministic objective that records every evaluation it is asked for."""

    block_params = (100, 100, 100, 100, 100, 100)

    def __init__(self) -> None:
        self.calls: list[tuple[tuple, int | None]] = []

    def evaluate(self, candidates, n_samples=None, n_tokens=None):
        out = []
        for c in candidates:
            self.calls.append((c.key(), n_samples))
            g = c.genome.row_canonical()
            err = abs(g.f1 - 1) + abs(g.f2 - 0) * 0.5 + g.beta * 0.1
            err -= sum((r - 0.5) * (i - 2.5) for i, r in enumerate(c.block_sparsity))
            if n_samples is not None:  # a screening error: on other sequences, not comparable
                err = err * 0.9 + 0.01 * g.alpha
            out.append(Evaluation(1.0 + err, float(np.mean(c.block_sparsity)), n_samples or 8, 0.0))
        return out

    def layer_errors(self, candidates):
        """A layer-wise proxy: the screening error, noisier still (recorded as 0 sequences)."""
        out = []
        screened = self.evaluate(candidates, 1)
        self.calls[-len(candidates) :] = [(c.key(), 0) for c in candidates]
        for c, e in zip(candidates, screened, strict=True):
            g = c.genome.row_canonical()
            out.append(Evaluation(e.error * 0.8 + 0.02 * g.f2, e.sparsity, 0, 0.0))
        return out


def candidate_of(recipe: PruneConfig, n_blocks: int) -> Candidate:
    """The candidate a searched candidate's recipe ships (one linear layer per block)."""
    plan = recipe.plan
    if plan.linear_sparsity:
        return Candidate(recipe.genome, tuple(plan.linear_sparsity), tuple(plan.linear_sparsity))
    ratios = tuple(plan.block_sparsity) or (float(recipe.sparsity),) * n_blocks
    return Candidate(recipe.genome, ratios)


class Interrupt(Exception):  # noqa: N818
    pass


def state_config(**fields) -> SearchConfig:
    # the opening screen is off here (tests/unit/test_screen.py resumes it)
    base = {
        "model": "tiny",
        "sparsity": 0.5,
        "population": 8,
        "generations": GENERATIONS,
        "screen": {"rungs": "off"},
    }
    return SearchConfig(**{**base, "seed": 1, **fields})


def stop_after(number: int, snaps: list):
    def on_generation(snap) -> None:
        snaps.append(snap)
        if snap.number == number:
            raise Interrupt

    return on_generation
