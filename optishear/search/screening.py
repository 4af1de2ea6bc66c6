"""Evaluation inside the search: de-duplication, the cache, and low-fidelity screening.

Candidates with equal keys give identical masks, so each is evaluated once per search. With
`low_fidelity_samples`, fresh candidates are first scored on a few sequences and only the best
share (`promote_fraction`) gets the full evaluation; the others get a scaled stand-in.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from optishear.candidates import Candidate, Evaluation
from optishear.config import SearchConfig
from optishear.search.evaluator import BatchEvaluator
from optishear.search.state import SearchState


class Screening:
    """Evaluates through a BatchEvaluator into the state's caches and counters."""

    def __init__(self, evaluator: BatchEvaluator, state: SearchState, config: SearchConfig) -> None:
        self.evaluator = evaluator
        self.state = state
        self.config = config

    def _full(self, cands: list[Candidate]) -> None:
        for c, e in zip(cands, self.evaluator.evaluate(cands), strict=True):
            self.state.full[c.key()] = e
        self.state.evaluations += len(cands)

    def evaluate(self, cands: Sequence[Candidate]) -> list[Evaluation]:
        st = self.state
        todo: dict[Any, Candidate] = {}
        for c in cands:
            if c.key() in st.full:
                st.cache_hits += 1
            elif c.key() not in todo:
                todo[c.key()] = c
            else:
                st.cache_hits += 1
        pending = list(todo.values())
        n_low = self.config.low_fidelity_samples
        if n_low and len(pending) > 1:
            fresh = [c for c in pending if c.key() not in st.low]
            for c, e in zip(fresh, self.evaluator.evaluate(fresh, n_low), strict=True):
                st.low[c.key()] = e
            st.evaluations += len(fresh)
            pending.sort(key=lambda c: st.low[c.key()].error)
            n_up = max(1, math.ceil(self.config.promote_fraction * len(pending)))
            promote, held = pending[:n_up], pending[n_up:]
            self._full(promote)
            self._estimate(promote, held)
        else:
            self._full(pending)
        return [st.full.get(c.key()) or st.estimated[c.key()] for c in cands]

    def _estimate(self, promoted: list[Candidate], held: list[Candidate]) -> None:
        """Full-fidelity stand-ins for candidates the screening did not promote.

        A screening error is on other (fewer) sequences, so it is not comparable with full
        errors: it is scaled by the full/screening ratio seen on the promoted candidates, and
        never ranks above a promoted one, since the screening already ranked it below them.
        """
        st = self.state
        ratios = [st.full[c.key()].error / max(st.low[c.key()].error, 1e-12) for c in promoted]
        scale = float(np.median(ratios))
        floor = max(st.full[c.key()].error for c in promoted)
        for c in held:
            low = st.low[c.key()]
            st.estimated[c.key()] = replace(low, error=max(low.error * scale, floor))

    def ensure_full(self, cands: Sequence[Candidate]) -> list[Evaluation]:
        missing = list({c.key(): c for c in cands if c.key() not in self.state.full}.values())
        if missing:
            self._full(missing)
        return [self.state.full[c.key()] for c in cands]
