"""Evaluation inside the search: de-duplication, the cache, and low-fidelity screening.

Candidates with equal keys give identical masks, so each is evaluated once per search. With
`low_fidelity_samples`, fresh candidates are first scored on a few sequences and only the best
share (`promote_fraction`) gets the full evaluation; the others get a scaled stand-in. A
metric stage opens with `Screening.screen`: every row-canonical class, promoted by fidelity.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from optishear.config import SearchConfig
from optishear.config.fields import LAYER_RUNG
from optishear.core.genome import canonical_genomes
from optishear.core.heartbeat import Heartbeat, Listener
from optishear.recipe.candidates import Candidate, Evaluation, Scored
from optishear.search.evaluator import BatchEvaluator
from optishear.search.layer_proxy import PROXY_COST
from optishear.search.state import SearchState

logger = logging.getLogger(__name__)

# Candidates per call to the evaluator: a few per Ray actor at a time (the pool spreads each
# call's candidates), and a progress line possible between calls.
_CHUNK = 32
_PROXY_CHUNK = 128  # the proxy's candidates are some 10 times cheaper


class Screening:
    """Evaluates through a BatchEvaluator into the state's caches and counters.

    With screening steps n1 < n2 < ... (`low_fidelity_samples`), fresh candidates are scored on
    n1 sequences, the best `promote_fraction` of them on n2, and so on; the last survivors get
    the full evaluation. `state.cost` counts the work in full-evaluation equivalents.
    """

    def __init__(
        self,
        evaluator: BatchEvaluator,
        state: SearchState,
        config: SearchConfig,
        listener: Listener | None = None,
    ) -> None:
        self.evaluator = evaluator
        self.state = state
        self.config = config
        self.listener = listener
        self.label = ""  # the step under way, for progress lines: a rung, a generation
        self.full_samples = config.full_samples()
        self.steps = tuple(n for n in (config.low_fidelity_samples or ()) if n < self.full_samples)
        self.seq_len = config.calibration.seq_len

    def _full(self, cands: list[Candidate]) -> None:
        for c, e in zip(cands, self._scored(cands), strict=True):
            self.state.full[c.key()] = e
        self.state.evaluations += len(cands)
        self.state.cost += len(cands)

    def _low(self, cands: list[Candidate], n: int, tokens: int = 0) -> None:
        """Score on the first n sequences (their first `tokens` tokens; 0: all of them)."""
        for c, e in zip(cands, self._scored(cands, n, tokens), strict=True):
            self.state.low[(c.key(), n, tokens)] = replace(e, n_tokens=tokens)
        self.state.evaluations += len(cands)
        share = tokens / self.seq_len if tokens else 1.0
        self.state.cost += len(cands) * n / self.full_samples * min(share, 1.0)

    def _scored(
        self, cands: list[Candidate], n: int | None = None, tokens: int = 0
    ) -> list[Evaluation]:
        """The evaluator's errors at full fidelity, or on n sequences' first `tokens` tokens."""
        fidelity = "full" if n is None else f"{n} x {tokens or self.seq_len} tokens"
        return self._in_chunks(
            cands,
            f"scoring {len(cands)} candidates ({fidelity})",
            _CHUNK,
            lambda chunk: (
                self.evaluator.evaluate(chunk)
                if n is None
                else self.evaluator.evaluate(chunk, n, tokens or None)
            ),
        )

    def _in_chunks(
        self,
        cands: list[Candidate],
        what: str,
        size: int,
        score: Callable[[list[Candidate]], list[Evaluation]],
    ) -> list[Evaluation]:
        """`score` asked for `size` candidates at a time, so that a long batch (a screening
        rung of 972 classes) logs its progress at least every 30 s when it runs that long."""
        label = f"{self.label}: {what}" if self.label else what
        beat = Heartbeat(logger, label, len(cands), listener=self.listener)
        out: list[Evaluation] = []
        for i in range(0, len(cands), size):
            got = score(cands[i : i + size])
            out += got
            beat.step(len(out), min(e.error for e in got))
        return out

    def rung(self, cands: Sequence[Candidate], n: int, tokens: int) -> list[Evaluation]:
        """Every candidate scored on n sequences of `tokens` tokens, or by the layer-wise proxy
        for the LAYER_RUNG (0, 0) (cached ones looked up)."""
        proxy = (n, tokens) == LAYER_RUNG
        if not proxy:
            n = min(n, self.full_samples)
            tokens = 0 if tokens >= self.seq_len else tokens
        low = self.state.low
        todo = list({c.key(): c for c in cands if (c.key(), n, tokens) not in low}.values())
        if todo and proxy:
            self._proxy(todo)
        elif todo:
            self._low(todo, n, tokens)
        return [low[(c.key(), n, tokens)] for c in cands]

    def _proxy(self, cands: list[Candidate]) -> None:
        what = f"scoring {len(cands)} candidates (layer-wise proxy)"
        got = self._in_chunks(cands, what, _PROXY_CHUNK, self.evaluator.layer_errors)
        for c, e in zip(cands, got, strict=True):
            self.state.low[(c.key(), *LAYER_RUNG)] = e
        self.state.evaluations += len(cands)
        self.state.cost += len(cands) * PROXY_COST

    def screen(
        self,
        stage: str,
        second_order: bool,
        n_blocks: int,
        clock: float,
        report: Callable[[dict[str, Any], list[Scored]], None],
    ) -> list[Candidate]:
        """Successive halving over every row-canonical class of the space, at the target's
        uniform plan: all are scored on the first rung, the best `screen.keep` share of each
        rung (never fewer than a population) on the next. Returns the last rung's survivors,
        best first; NSGA-III starts from the best `population` of them at full fidelity.

        Every rung is recorded in the history and handed to `report` (which saves and reports
        it) with its promoted classes; on resume, rungs already in the history are read back
        from the cache and not reported again. `clock` is the search's start.
        """
        s = self.config
        st = self.state
        plan = (s.target,) * n_blocks
        alive = [Candidate(g, plan) for g in canonical_genomes(second_order=second_order)]
        recorded = sum(1 for h in st.history if h["stage"] == stage and "screen_rung" in h)
        rungs = s.screen.rungs
        for r, (n, tokens) in enumerate(rungs):
            start = time.perf_counter()
            before, cost_before = st.evaluations, st.cost
            self.label = f"stage {stage}, screen rung {r + 1}/{len(rungs)}"
            evals = self.rung(alive, n, tokens)
            order = sorted(range(len(alive)), key=lambda i: evals[i].error)  # stable: by index
            keep = max(s.population, math.ceil(s.screen.keep * len(alive)))
            promoted = [Scored(alive[i], evals[i], 0.0) for i in order[:keep]]
            alive = [p.candidate for p in promoted]
            if r < recorded:
                continue
            st.elapsed = time.perf_counter() - clock
            record = {
                "stage": stage,
                "generation": r - len(rungs),  # the rungs come before generation 1
                "screen_rung": r,
                "sequences": n,
                "tokens": tokens,
                "classes": len(evals),
                "promoted": len(promoted),
                "evaluations": st.evaluations - before,
                "cost": st.cost - cost_before,
                "best_error": promoted[0].evaluation.error,
                "seconds": time.perf_counter() - start,
                "elapsed": st.elapsed,
            }
            st.history.append(record)
            logger.info(
                "stage %s screen rung %d/%d: %d classes %s, %d promoted",
                stage,
                r + 1,
                len(rungs),
                len(evals),
                "by the layer-wise proxy" if (n, tokens) == LAYER_RUNG else f"on {n}x{tokens}",
                len(promoted),
            )
            report(record, promoted)
        return alive

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
        survivors = list(todo.values())
        dropped: list[tuple[int, list[Candidate]]] = []
        for n in self.steps:
            if len(survivors) <= 1:
                break
            self._low([c for c in survivors if (c.key(), n, 0) not in st.low], n)
            survivors.sort(key=lambda c, n=n: st.low[(c.key(), n, 0)].error)
            n_up = max(1, math.ceil(self.config.promote_fraction * len(survivors)))
            dropped.append((n, survivors[n_up:]))
            survivors = survivors[:n_up]
        self._full(survivors)
        if dropped:
            self._estimate(survivors, dropped)
        return [st.full.get(c.key()) or st.estimated[c.key()] for c in cands]

    def _estimate(
        self, promoted: list[Candidate], dropped: list[tuple[int, list[Candidate]]]
    ) -> None:
        """Full-fidelity stand-ins for candidates a screening step did not promote.

        A screening error is on other (fewer) sequences, so it is not comparable with full
        errors: it is scaled by the full/screening ratio seen on the promoted candidates, and
        never ranks above a candidate that went further, since the screening ranked it below.
        """
        st = self.state
        floor = max(st.full[c.key()].error for c in promoted)
        for n, held in reversed(dropped):  # the last step's drop-outs rank above the first's
            ratios = [
                st.full[c.key()].error / max(st.low[(c.key(), n, 0)].error, 1e-12) for c in promoted
            ]
            scale = float(np.median(ratios))
            estimates = []
            for c in held:
                low = st.low[(c.key(), n, 0)]
                estimates.append(max(low.error * scale, floor))
                st.estimated[c.key()] = replace(low, error=estimates[-1])
            if estimates:
                floor = max(floor, *estimates)

    def ensure_full(self, cands: Sequence[Candidate]) -> list[Evaluation]:
        missing = list({c.key(): c for c in cands if c.key() not in self.state.full}.values())
        if missing:
            self._full(missing)
        return [self.state.full[c.key()] for c in cands]
