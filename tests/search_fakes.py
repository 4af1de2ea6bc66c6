"""A search driven without a model: a cheap deterministic objective, a small config, and a
generation callback that interrupts the search (the resume tests)."""

import numpy as np

from optishear.config import SearchConfig
from optishear.recipe.candidates import Evaluation

GENERATIONS = 4  # per stage; 'both' runs 2 stages: generations 1-4, then 5-8


class FakeEvaluator:
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
