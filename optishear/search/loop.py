"""The search in ask/tell form: evaluates through a BatchEvaluator, saves state every generation.

Metric and per-block stages run NSGA-III; the allocation stage runs NSGA-III or (1+lambda)
with the level-switch mutation (built in optishear.search.algorithms). Every algorithm is a pymoo one,
so resuming replays its stored tells from its seed. A stage that searches the metric opens
with a screen of every row-canonical class (successive halving over rising fidelities), and
its NSGA-III starts from the survivors; the screen is saved rung by rung and, on resume, read
back from the evaluation cache.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from pymoo.core.algorithm import Algorithm
from pymoo.core.evaluator import Evaluator
from pymoo.problems.static import StaticProblem
from pymoo.util.nds.non_dominated_sorting import NonDominatedSorting
from torch import Tensor

from optishear.config import SearchConfig
from optishear.core.errors import ConfigError, OptiShearError
from optishear.core.genome import WANDA_GENOME
from optishear.core.heartbeat import Listener
from optishear.evaluation.held_out import HeldOutRow
from optishear.recipe.candidates import Candidate, Evaluation, Scored
from optishear.search.algorithms import Space, StageBuilder
from optishear.search.allocation import (
    AllocationSpace,
)
from optishear.search.evaluator import (
    BatchEvaluator,
    DatabaseReporter,
    HeldOutComparer,
    compare_held_out,
)
from optishear.search.finish import BaselinePlans, recommend
from optishear.search.results import GenerationSnapshot, SearchProgress, SearchResult, StageOutcome
from optishear.search.screening import Screening
from optishear.search.shipped_jobs import HeldOutRequest
from optishear.search.space import SearchSpace, plan_gap
from optishear.search.state import SearchState, SearchStateError, Tell, replay_mismatch

logger = logging.getLogger(__name__)


class _Search:
    def __init__(
        self,
        evaluator: BatchEvaluator,
        config: SearchConfig,
        state: SearchState,
        path: Path | None,
        on_generation: Callable[[GenerationSnapshot], None] | None = None,
        listener: Listener | None = None,
        held_out: HeldOutRequest | None = None,
    ) -> None:
        self.evaluator = evaluator
        self.listener = listener
        self.held_out = held_out
        self.held_out_rows: dict[str, HeldOutRow] = {}  # measured with the as-shipped scores
        self.state = state
        self.path = path
        self.on_generation = on_generation
        self.config = config
        self.block_params = tuple(evaluator.block_params)
        self.screening = Screening(evaluator, state, config, listener)
        self.stages = StageBuilder(config, state, evaluator)
        self.evaluate = self.screening.evaluate
        self.ensure_full = self.screening.ensure_full
        self._last_space: Space | None = None
        self._seeds: list[Candidate] = []  # the screen's survivors, best first

    def objectives(
        self, space: Space, cands: Sequence[Candidate], evals: Sequence[Evaluation]
    ) -> np.ndarray:
        """Error alone, or with the sparsity gap (per-block), or with the achieved sparsity
        maximised (the allocation's front across sparsities)."""
        front = isinstance(space, AllocationSpace) and space.mode == "front"
        rows = [
            ([e.error, -e.sparsity] if front else [e.error, space.gap(c)])
            if space.n_obj == 2
            else [e.error]
            for c, e in zip(cands, evals, strict=True)
        ]
        return np.array(rows, dtype=float)

    def _non_dominated(
        self, space: Space, cands: Sequence[Candidate], evals: Sequence[Evaluation]
    ) -> list[Scored]:
        """The non-dominated candidates, once each, those meeting the target first by error."""
        F = self.objectives(space, cands, evals)
        best = NonDominatedSorting().do(F, only_non_dominated_front=True)
        seen: dict[Any, Scored] = {}
        for i in best:
            seen.setdefault(cands[i].key(), Scored(cands[i], evals[i], space.gap(cands[i])))
        return sorted(seen.values(), key=lambda s: (not s.meets_target, s.evaluation.error))

    def front(self, space: Space, algorithm: Algorithm) -> list[Scored]:
        pop = algorithm.pop
        cands = [space.decode(x) for x in pop.get("X")]
        evals = self.ensure_full(cands)  # the reported front is always at full fidelity
        return self._non_dominated(space, cands, evals)

    def population(self, space: Space, algorithm: Algorithm) -> list[Scored]:
        """The current population with the evaluations known now, once per distinct candidate."""
        st = self.state
        seen: dict[Any, Scored] = {}
        for x in algorithm.pop.get("X"):
            c = space.decode(x)
            e = st.full.get(c.key()) or st.estimated[c.key()]
            seen.setdefault(c.key(), Scored(c, e, space.gap(c)))
        return list(seen.values())

    def current_front(self, space: Space, algorithm: Algorithm) -> list[Scored]:
        """The population's non-dominated set with the evaluations known now (no new ones)."""
        st = self.state
        cands = [space.decode(x) for x in algorithm.pop.get("X")]
        evals = [st.full.get(c.key()) or st.estimated[c.key()] for c in cands]
        return self._non_dominated(space, cands, evals)

    def run(self, progress: Callable[[SearchProgress], None] | None) -> SearchResult:
        st = self.state
        stages = self.config.stage_list()
        clock = time.perf_counter() - st.elapsed
        budget = self.config.max_evaluations
        while st.stage_index < len(stages):
            stage = stages[st.stage_index]
            space = self.stages.space(stage)
            self._last_space = space
            self._seeds = []
            if stage in self.config.screened_stages():
                assert isinstance(space, SearchSpace)
                self._seeds = self.screening.screen(
                    stage,
                    space.second_order,
                    len(self.block_params),
                    clock,
                    lambda record, promoted, stage=stage: self._report(
                        stage, record, promoted[:1], promoted, progress
                    ),
                )
            algorithm = self._replayed(space)
            while algorithm.has_next():
                spent = sum(h.get("cost", 0.0) for h in st.history if h["stage"] == stage)
                # one generation always runs: the screen alone may spend the budget
                if budget is not None and st.tells and spent >= budget - 1e-9:
                    logger.info("stage %s: evaluation budget %g spent", stage, budget)
                    break
                gen_start = time.perf_counter()
                before = st.evaluations
                cost_before = st.cost
                pop = algorithm.ask()
                if pop is None:  # no unseen offspring left: the small space is exhausted
                    break
                self.screening.label = f"stage {stage}, generation {algorithm.n_gen}"
                cands = [space.decode(x) for x in pop.get("X")]
                evals = self.evaluate(cands)
                F = self.objectives(space, cands, evals)
                Evaluator().eval(StaticProblem(algorithm.problem, F=F), pop)
                algorithm.tell(infills=pop)
                st.tells.append(Tell(pop.get("X").tolist(), F.tolist()))
                best = float(algorithm.pop.get("F")[:, 0].min())
                st.elapsed = time.perf_counter() - clock
                record = {
                    "stage": stage,
                    "generation": algorithm.n_gen - 1,
                    "evaluations": st.evaluations - before,
                    "cost": st.cost - cost_before,
                    "best_error": best,
                    "seconds": time.perf_counter() - gen_start,
                    "elapsed": st.elapsed,
                }
                st.history.append(record)
                self._report(
                    stage,
                    record,
                    self.current_front(space, algorithm),
                    self.population(space, algorithm),
                    progress,
                )
            st.outcomes.append(
                StageOutcome(
                    stage,
                    self.front(space, algorithm),
                    tuple(self.population(space, algorithm)),
                    space.decode(self.stages.baseline_genes(space)),
                )
            )
            st.stage_index += 1
            st.tells = []
            self._save()
        final = st.outcomes[-1].front
        meeting = [s for s in final if s.meets_target]
        top = max(1, self.config.refit_top or self.config.rescore_top)
        finalists = (
            self._finalists(st.outcomes[-1], top) if meeting else [min(final, key=lambda s: s.gap)]
        )
        # Scored = shipped: the finalists and the published baselines, pruned as they ship
        plans = BaselinePlans.of(self.config, self.evaluator)  # OWL's plan asked for once
        chosen = recommend(
            self.config, self.evaluator, finalists, plans, self.listener, self.held_out
        )
        self.held_out_rows = chosen.held_out
        baselines = self.baselines(plans)
        database = (
            self.evaluator.database_info() if isinstance(self.evaluator, DatabaseReporter) else None
        )
        refit = self.config.shipped_update() == "lstsq"
        return SearchResult(
            self.config,
            st.outcomes,
            chosen.recommended,
            st.history,
            st.evaluations,
            st.cache_hits,
            time.perf_counter() - clock,
            chosen.shipped if refit else [],
            [] if refit else chosen.shipped,
            finalists,
            baselines,
            database.describe() if database is not None else "",
            recipe=chosen.recipe,
            fallbacks=chosen.fallbacks,
            fallback=chosen.note,
        )

    def _report(
        self,
        stage: str,
        record: dict[str, Any],
        front: list[Scored],
        population: list[Scored],
        progress: Callable[[SearchProgress], None] | None,
    ) -> None:
        """Save the state and report a step (a generation or a screening rung): the snapshot
        to `on_generation`, the progress to `progress`."""
        st = self.state
        state_bytes = self._save()
        done = len(st.history)
        total = self.config.total_generations()
        report = SearchProgress(
            stage,
            st.stage_index,
            len(self.config.stage_list()),
            record["generation"],
            self.config.generations,
            st.evaluations,
            st.cache_hits,
            record["best_error"],
            st.elapsed,
            st.elapsed / done * max(total - done, 0),
            done,
        )
        if self.on_generation:
            self.on_generation(
                GenerationSnapshot(report, done, dict(record), front, state_bytes, population)
            )
        if progress:
            progress(report)

    def _finalists(self, outcome: StageOutcome, k: int) -> list[Scored]:
        """The k best distinct candidates meeting the target, and the stage's baseline.

        The baseline (Wanda's metric, or the fixed metric with the uniform plan) joins them
        even when the engine ranked it lower, so that the recommendation is never worse than
        it as shipped, on the fitness sequences.
        """
        pool: dict[Any, Scored] = {}
        for s in (*outcome.front, *outcome.population):  # a front member wins a shared key
            pool.setdefault(s.candidate.key(), s)
        ranked = sorted(
            (s for s in pool.values() if s.meets_target), key=lambda s: s.evaluation.error
        )
        best = ranked[:k]
        base = outcome.baseline
        if base is not None and base.key() not in {s.candidate.key() for s in best}:
            best.append(Scored(base, self.ensure_full([base])[0], self._gap(base)))
        return best

    def _gap(self, candidate: Candidate) -> float:
        gap = plan_gap(candidate.block_sparsity, self.block_params, self.config.target)
        space = self._last_space
        if isinstance(space, AllocationSpace) and space.mode == "at_least":
            # N:M with dense exceptions: a sparser candidate meets the budget
            p = np.asarray(self.block_params, dtype=np.float64)
            mean = float(np.dot(candidate.block_sparsity, p) / p.sum())
            return max(0.0, self.config.target - mean)
        return gap

    def baselines(self, plans: BaselinePlans) -> list[Scored]:
        """Wanda with the uniform plan, and OWL+Wanda where the evaluator can plan OWL.

        Wanda's genome with the uniform plan starts every metric stage, so its full evaluation
        is usually cached already. OWL needs dense statistics, which only the evaluator holds,
        and only an unstructured pattern lets blocks differ. Magnitude pruning is no genome of
        the meta-metric space (every genome is weighted by activations), so it is not reported.
        """
        self.screening.label = "baselines at the target"
        named = [("Wanda", Candidate(WANDA_GENOME, plans.uniform))]
        if plans.owl is not None:
            named.append(("OWL+Wanda", Candidate(WANDA_GENOME, plans.owl)))
        evals = self.ensure_full([c for _, c in named])
        return [Scored(c, e, self._gap(c), name) for (name, c), e in zip(named, evals, strict=True)]

    def _replayed(self, space: Space) -> Algorithm:
        """The stage's algorithm, set up from its seed, with the stored generations told again.

        pymoo is deterministic for a seed and the same told objectives, so replaying the
        stored tells brings it to exactly the state it had after the last saved generation.
        """
        algorithm = self.stages.algorithm(space, self._seeds)
        for number, tell in enumerate(self.state.tells, start=1):
            pop = algorithm.ask()
            if pop is None or not np.array_equal(pop.get("X"), np.asarray(tell.X)):
                raise replay_mismatch("the search state", number)
            F = np.asarray(tell.F, dtype=float)
            if F.shape != (len(pop), algorithm.problem.n_obj):
                raise SearchStateError(
                    f"the search state is damaged: generation {number} stores objectives of "
                    f"shape {F.shape}, not {(len(pop), algorithm.problem.n_obj)}"
                )
            Evaluator().eval(StaticProblem(algorithm.problem, F=F), pop)
            algorithm.tell(infills=pop)
        return algorithm

    def _save(self) -> bytes:
        """The state as JSON; written atomically to `path` (a crash keeps the previous one)."""
        data = self.state.to_json()
        if self.path is not None:
            tmp = self.path.with_name(self.path.name + ".tmp")
            tmp.write_bytes(data)
            tmp.replace(self.path)
        return data


def load_state(path: Path) -> SearchState:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise OptiShearError(f"cannot read search state {path}: {exc}") from exc
    return SearchState.from_json(data, str(path))


def run_search(
    evaluator: BatchEvaluator,
    config: SearchConfig,
    *,
    state_path: Path | None = None,
    resume: bool = False,
    progress: Callable[[SearchProgress], None] | None = None,
    on_generation: Callable[[GenerationSnapshot], None] | None = None,
    resume_from: bytes | None = None,
    held_out_ids: Tensor | None = None,
    activity: Listener | None = None,
) -> SearchResult:
    """Run (or, with `resume`, continue) a search; state is saved after every generation.

    `on_generation` receives each completed generation's snapshot (progress, current front and
    JSON state) before `progress` is called; `resume_from` continues from such a snapshot's
    `state` instead of from `state_path`. With `config.compare_baselines`, the recommended
    candidate's held-out perplexity is measured beside the baselines' on
    `held_out_ids` (optishear.recipe.comparison.held_out_ids) by the evaluator's model.
    `activity` hears every step of long work (a rung, a generation's batch, the as-shipped
    scoring, the held-out rows) as it goes.
    """
    if config.compare_baselines and held_out_ids is None:
        raise ConfigError("comparing with the baselines needs the held-out token ids")
    if config.compare_baselines and not isinstance(evaluator, HeldOutComparer):
        raise ConfigError(f"{type(evaluator).__name__} cannot measure held-out perplexity")
    wanted = config.resume_identity()
    if resume_from is not None:
        state = SearchState.from_json(resume_from)
        state.check_config(wanted, "the given state")
        logger.info("resuming after %d completed generations", len(state.history))
    elif resume and state_path is not None and state_path.is_file():
        state = load_state(state_path)
        state.check_config(wanted, str(state_path))
        logger.info("resuming after %d completed generations", len(state.history))
    else:
        state = SearchState(wanted)
    request = None
    if config.compare_baselines:
        assert held_out_ids is not None
        request = HeldOutRequest(config.evaluation, held_out_ids)
    search = _Search(evaluator, config, state, state_path, on_generation, activity, request)
    result = search.run(progress)
    if request is not None:
        assert isinstance(evaluator, HeldOutComparer)
        result.held_out = compare_held_out(
            evaluator, result.recipe, config, request.ids, activity, search.held_out_rows
        )
    return result
