"""NSGA-III in ask/tell form: evaluates through a BatchEvaluator, saves state every generation."""

from __future__ import annotations

import logging
import math
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

import cloudpickle
import numpy as np
from pymoo.algorithms.moo.nsga3 import NSGA3
from pymoo.core.evaluator import Evaluator
from pymoo.core.problem import Problem
from pymoo.operators.crossover.sbx import SBX
from pymoo.operators.mutation.pm import PM
from pymoo.problems.static import StaticProblem
from pymoo.util.nds.non_dominated_sorting import NonDominatedSorting
from pymoo.util.ref_dirs import get_reference_directions

from optishear.errors import ConfigError, OptiShearError
from optishear.masks import Pattern, check_target
from optishear.meta import WANDA_GENOME, Genome
from optishear.search.fitness import Candidate, Evaluation, FitnessEngine
from optishear.search.space import BalanceRepair, SearchSpace, Stage, plan_gap

logger = logging.getLogger(__name__)

StagePlan = Literal["metric", "layerwise", "both", "joint"]
GAP_TOLERANCE = 1e-6  # a plan meets the target when its weighted mean is this close


class BatchEvaluator(Protocol):
    """Evaluates candidates, returning one Evaluation each, in the order given."""

    @property
    def block_params(self) -> tuple[int, ...]: ...

    def evaluate(
        self, candidates: Sequence[Candidate], n_samples: int | None = None
    ) -> list[Evaluation]: ...

    def shipped(self, candidates: Sequence[Candidate], refit: bool) -> list[Evaluation]:
        """Errors of the candidates pruned as shipped: pruned-prefix masks (refit weights)."""
        ...


@runtime_checkable
class OwlPlanner(Protocol):
    """Optional for a BatchEvaluator: OWL's per-block plan, for the OWL+Wanda baseline."""

    def owl_ratios(self, target: float) -> tuple[float, ...]: ...


class InProcessEvaluator:
    """Evaluates on one FitnessEngine in this process."""

    def __init__(self, engine: FitnessEngine) -> None:
        self.engine = engine

    @property
    def block_params(self) -> tuple[int, ...]:
        return tuple(self.engine.block_params)

    def evaluate(
        self, candidates: Sequence[Candidate], n_samples: int | None = None
    ) -> list[Evaluation]:
        return [self.engine.evaluate(c, n_samples) for c in candidates]

    def shipped(self, candidates: Sequence[Candidate], refit: bool) -> list[Evaluation]:
        return [self.engine.evaluate(c, shipped=True, refit=refit) for c in candidates]

    def owl_ratios(self, target: float) -> tuple[float, ...]:
        return self.engine.owl_ratios(target)


@dataclass(frozen=True)
class SearchSettings:
    """What to search and with which budget; equal settings and seed give equal fronts."""

    target: float
    pattern: Pattern = field(default_factory=Pattern)
    stages: StagePlan = "both"
    population: int = 16
    generations: int = 8  # per stage
    seed: int = 0
    step: float = 0.05
    levels: int = 1
    genome: Genome = WANDA_GENOME  # fixed metric of a layerwise-only search
    low_fidelity_samples: int | None = None
    promote_fraction: float = 0.5
    # After the last stage, refit the best few candidates (least squares, as shipped) and
    # recommend the best of them after the refit; 0 recommends on mask-only errors.
    refit_top: int = 0
    # Or re-score the best few as shipped without a refit (pruned-prefix statistics, as the
    # final prune computes them) and recommend the best of those.
    rescore_top: int = 0

    def __post_init__(self) -> None:
        check_target(self.target, self.pattern)
        if self.pattern.structured and self.stages in ("layerwise", "joint"):
            raise ConfigError(
                f"an {self.pattern} pattern keeps every block at N/M: only the metric can be "
                "searched"
            )
        if self.stages not in ("metric", "layerwise", "both", "joint"):
            raise ConfigError(
                f"stages must be metric, layerwise, both or joint, got {self.stages!r}"
            )
        if self.population < 4:
            raise ConfigError(f"population must be >= 4, got {self.population}")
        if self.generations < 1:
            raise ConfigError(f"generations must be >= 1, got {self.generations}")
        if self.low_fidelity_samples is not None and self.low_fidelity_samples < 1:
            raise ConfigError("low-fidelity samples must be >= 1")
        if not 0 < self.promote_fraction <= 1:
            raise ConfigError("promote fraction must be in (0, 1]")
        if self.refit_top < 0:
            raise ConfigError(f"refit top must be >= 0, got {self.refit_top}")
        if self.rescore_top < 0:
            raise ConfigError(f"rescore top must be >= 0, got {self.rescore_top}")
        if self.refit_top and self.rescore_top:
            raise ConfigError(
                "refit top already re-scores its candidates as shipped: set refit top or "
                "rescore top, not both"
            )

    def stage_list(self) -> list[Stage]:
        if self.stages == "both":
            return ["metric"] if self.pattern.structured else ["metric", "layerwise"]
        return [self.stages]

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["pattern"] = str(self.pattern)
        d["genome"] = self.genome.to_dict()
        return d


@dataclass(frozen=True)
class Scored:
    """A candidate with its evaluation and objective vector."""

    candidate: Candidate
    evaluation: Evaluation
    gap: float

    @property
    def meets_target(self) -> bool:
        return self.gap <= GAP_TOLERANCE

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": f"{self.candidate.genome.index}-{_plan_id(self.candidate.ratios)}",
            **self.candidate.to_dict(),
            **self.evaluation.to_dict(),
            "gap": self.gap,
            "meets_target": self.meets_target,
        }


@dataclass(frozen=True)
class Baseline(Scored):
    """A published method at the search's target, evaluated like a candidate (full fidelity)."""

    name: str

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, **super().to_dict()}


def _plan_id(ratios: Sequence[float]) -> str:
    if len(set(ratios)) == 1:
        return "uniform"
    return format(zlib.crc32(",".join(f"{r:.9f}" for r in ratios).encode()), "08x")


@dataclass(frozen=True)
class SearchProgress:
    stage: str
    stage_index: int
    n_stages: int
    generation: int
    n_generations: int
    evaluations: int
    cache_hits: int
    best_error: float
    elapsed: float
    eta: float


@dataclass(frozen=True)
class GenerationSnapshot:
    """What a caller may persist after each generation (the service writes it to its DB).

    `front` is the non-dominated set of the current population with the evaluations known so
    far (low-fidelity ones included); `population` is that whole population (the survivors of
    this generation, one entry per distinct candidate), of which `front` is a subset; `state`
    is the same serialized state that `state_path` receives, which
    `run_search(resume_from=...)` continues from.
    """

    progress: SearchProgress
    number: int  # completed generations across stages, 1-based
    record: dict[str, Any]
    front: list[Scored]
    state: bytes
    population: list[Scored] = field(default_factory=list)


@dataclass
class StageOutcome:
    stage: str
    front: list[Scored]
    # The stage's last population and the baseline candidate it started from (class-level
    # defaults: states saved before these fields existed still load).
    population: tuple[Scored, ...] = ()
    baseline: Candidate | None = None


@dataclass
class SearchResult:
    settings: SearchSettings
    stages: list[StageOutcome]
    recommended: Scored
    history: list[dict[str, Any]]
    evaluations: int
    cache_hits: int
    seconds: float
    # The best few again, pruned as shipped (refit weights); empty without refit.
    refitted: list[Scored] = field(default_factory=list)
    # The best few again, pruned as shipped (mask only); empty without rescore top.
    rescored: list[Scored] = field(default_factory=list)
    # The candidates re-scored as shipped, with their engine (mask-only) errors.
    finalists: list[Scored] = field(default_factory=list)
    # Wanda (and OWL+Wanda for unstructured targets) at the same target, mask-only errors.
    baselines: list[Baseline] = field(default_factory=list)

    @property
    def front(self) -> list[Scored]:
        return self.stages[-1].front

    def listed(self) -> list[Scored]:
        """The front, then the finalists off it (the recommendation may be one of them)."""
        keys = {s.candidate.key() for s in self.front}
        return [*self.front, *(s for s in self.finalists if s.candidate.key() not in keys)]

    def to_dict(self) -> dict[str, Any]:
        return {
            "settings": self.settings.to_dict(),
            "recommended": self.recommended.to_dict(),
            "front": [s.to_dict() for s in self.front],
            "stages": [
                {"stage": o.stage, "front": [s.to_dict() for s in o.front]} for o in self.stages
            ],
            "history": self.history,
            "evaluations": self.evaluations,
            "cache_hits": self.cache_hits,
            "seconds": self.seconds,
            "refitted": [s.to_dict() for s in self.refitted],
            "rescored": [s.to_dict() for s in self.rescored],
            "baselines": [b.to_dict() for b in self.baselines],
            "selection_rule": self.selection_rule(),
        }

    def selection_rule(self) -> str:
        finalists = self.refitted or self.rescored
        if not finalists:
            return (
                "lowest reconstruction error among front members whose parameter-weighted "
                f"sparsity is within {GAP_TOLERANCE:g} of the target"
            )
        how = (
            "refit by least squares, the lowest error after the refit"
            if self.refitted
            else "pruned as shipped (statistics from the pruned prefix), the lowest error"
        )
        return (
            f"of {len(finalists)} finalists meeting the target (the best distinct candidates "
            f"of the last population, and its baseline with the uniform plan), {how}"
        )


class _IntProblem(Problem):
    """pymoo's view of the space; objectives arrive through StaticProblem (ask/tell)."""

    def __init__(self, space: SearchSpace) -> None:
        xl, xu = space.bounds()
        super().__init__(n_var=space.n_var, n_obj=space.n_obj, xl=xl, xu=xu, vtype=int)


@dataclass
class _State:
    """Everything needed to continue a search after the last completed generation."""

    settings: SearchSettings
    stage_index: int = 0
    space: SearchSpace | None = None
    algorithm: Any = None
    full: dict[Any, Evaluation] = field(default_factory=dict)
    low: dict[Any, Evaluation] = field(default_factory=dict)
    estimated: dict[Any, Evaluation] = field(default_factory=dict)  # not promoted (see _estimate)
    outcomes: list[StageOutcome] = field(default_factory=list)
    history: list[dict[str, Any]] = field(default_factory=list)
    evaluations: int = 0
    cache_hits: int = 0
    elapsed: float = 0.0


def save_state(state: _State, path: Path) -> None:
    """Write atomically: a crash mid-write keeps the previous generation's state."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(cloudpickle.dumps(state))
    tmp.replace(path)


def load_state(path: Path, settings: SearchSettings) -> _State:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise OptiShearError(f"cannot read search state {path}: {exc}") from exc
    return _state_from_bytes(data, settings, str(path))


def _state_from_bytes(data: bytes, settings: SearchSettings, where: str) -> _State:
    try:
        state = cloudpickle.loads(data)
    except (EOFError, ValueError, AttributeError, ImportError) as exc:
        raise OptiShearError(f"cannot read search state {where}: {exc}") from exc
    if not isinstance(state, _State) or state.settings != settings:
        raise ConfigError(
            f"{where} holds the state of a different search; use the same settings or another "
            "folder"
        )
    return state


class _Search:
    def __init__(
        self,
        evaluator: BatchEvaluator,
        state: _State,
        path: Path | None,
        on_generation: Callable[[GenerationSnapshot], None] | None = None,
    ) -> None:
        self.evaluator = evaluator
        self.state = state
        self.path = path
        self.on_generation = on_generation
        self.settings = state.settings
        self.block_params = tuple(evaluator.block_params)

    # -- evaluation with de-duplication and the low-fidelity pass -------------------------
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
        n_low = self.settings.low_fidelity_samples
        if n_low and len(pending) > 1:
            fresh = [c for c in pending if c.key() not in st.low]
            for c, e in zip(fresh, self.evaluator.evaluate(fresh, n_low), strict=True):
                st.low[c.key()] = e
            st.evaluations += len(fresh)
            pending.sort(key=lambda c: st.low[c.key()].error)
            n_up = max(1, math.ceil(self.settings.promote_fraction * len(pending)))
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

    # -- one stage -------------------------------------------------------------------------
    def _space(self, stage: Stage) -> SearchSpace:
        s = self.settings
        uniform = (s.target,) * len(self.block_params)
        genome = (
            self.state.outcomes[-1].front[0].candidate.genome if self.state.outcomes else s.genome
        )
        return SearchSpace(
            stage,
            s.target,
            self.block_params,
            s.step,
            s.levels,
            genome,
            uniform if stage == "metric" else (),
        )

    def _algorithm(self, space: SearchSpace) -> NSGA3:
        s = self.settings
        if space.n_obj == 1:
            ref_dirs = np.array([[1.0]])
        else:
            ref_dirs = get_reference_directions("das-dennis", 2, n_partitions=s.population - 1)
        xl, xu = space.bounds()
        rng = np.random.default_rng(s.seed + 7919 * self.state.stage_index)
        init = rng.integers(xl, xu + 1, size=(s.population, space.n_var)).astype(float)
        init[0] = self._baseline_genes(space)  # the search starts from the baseline
        algorithm = NSGA3(
            ref_dirs=ref_dirs,
            pop_size=s.population,
            sampling=init,
            crossover=SBX(prob=0.9, eta=15, vtype=float),
            mutation=PM(eta=20, vtype=float),
            repair=BalanceRepair(space),
            eliminate_duplicates=True,
        )
        algorithm.setup(
            _IntProblem(space),
            termination=("n_gen", s.generations),
            seed=s.seed + self.state.stage_index,
            verbose=False,
        )
        return algorithm

    def _baseline_genes(self, space: SearchSpace) -> np.ndarray:
        genes: list[int] = []
        if space.has_metric:
            g = space.genome
            genes += [g.f1, g.f2, g.alpha, g.beta]
        if space.has_blocks:
            genes += [space.levels] * space.n_blocks
        return np.array(genes, dtype=float)

    def objectives(
        self, space: SearchSpace, cands: Sequence[Candidate], evals: Sequence[Evaluation]
    ) -> np.ndarray:
        rows = [
            [e.error, space.gap(c)] if space.n_obj == 2 else [e.error]
            for c, e in zip(cands, evals, strict=True)
        ]
        return np.array(rows, dtype=float)

    def _non_dominated(
        self, space: SearchSpace, cands: Sequence[Candidate], evals: Sequence[Evaluation]
    ) -> list[Scored]:
        """The non-dominated candidates, once each, those meeting the target first by error."""
        F = self.objectives(space, cands, evals)
        best = NonDominatedSorting().do(F, only_non_dominated_front=True)
        seen: dict[Any, Scored] = {}
        for i in best:
            seen.setdefault(cands[i].key(), Scored(cands[i], evals[i], space.gap(cands[i])))
        return sorted(seen.values(), key=lambda s: (not s.meets_target, s.evaluation.error))

    def front(self, space: SearchSpace, algorithm: NSGA3) -> list[Scored]:
        pop = algorithm.pop
        cands = [space.decode(x) for x in pop.get("X")]
        evals = self.ensure_full(cands)  # the reported front is always at full fidelity
        return self._non_dominated(space, cands, evals)

    def population(self, space: SearchSpace, algorithm: NSGA3) -> list[Scored]:
        """The current population with the evaluations known now, once per distinct candidate."""
        st = self.state
        seen: dict[Any, Scored] = {}
        for x in algorithm.pop.get("X"):
            c = space.decode(x)
            e = st.full.get(c.key()) or st.estimated[c.key()]
            seen.setdefault(c.key(), Scored(c, e, space.gap(c)))
        return list(seen.values())

    def current_front(self, space: SearchSpace, algorithm: NSGA3) -> list[Scored]:
        """The population's non-dominated set with the evaluations known now (no new ones)."""
        st = self.state
        cands = [space.decode(x) for x in algorithm.pop.get("X")]
        evals = [st.full.get(c.key()) or st.estimated[c.key()] for c in cands]
        return self._non_dominated(space, cands, evals)

    def run(self, progress: Callable[[SearchProgress], None] | None) -> SearchResult:
        st = self.state
        stages = self.settings.stage_list()
        clock = time.perf_counter() - st.elapsed
        while st.stage_index < len(stages):
            stage = stages[st.stage_index]
            if st.algorithm is None:
                st.space = self._space(stage)
                st.algorithm = self._algorithm(st.space)
            space, algorithm = st.space, st.algorithm
            assert space is not None
            while algorithm.has_next():
                gen_start = time.perf_counter()
                before = st.evaluations
                pop = algorithm.ask()
                if pop is None:  # no unseen offspring left: the small space is exhausted
                    break
                cands = [space.decode(x) for x in pop.get("X")]
                evals = self.evaluate(cands)
                F = self.objectives(space, cands, evals)
                Evaluator().eval(StaticProblem(algorithm.problem, F=F), pop)
                algorithm.tell(infills=pop)
                best = float(algorithm.pop.get("F")[:, 0].min())
                st.elapsed = time.perf_counter() - clock
                record = {
                    "stage": stage,
                    "generation": algorithm.n_gen - 1,
                    "evaluations": st.evaluations - before,
                    "best_error": best,
                    "seconds": time.perf_counter() - gen_start,
                    "elapsed": st.elapsed,
                }
                st.history.append(record)
                state_bytes = self._save()
                done = len(st.history)
                total = self.settings.generations * len(stages)
                report = SearchProgress(
                    stage,
                    st.stage_index,
                    len(stages),
                    record["generation"],
                    self.settings.generations,
                    st.evaluations,
                    st.cache_hits,
                    best,
                    st.elapsed,
                    st.elapsed / done * (total - done),
                )
                if self.on_generation:
                    self.on_generation(
                        GenerationSnapshot(
                            report,
                            done,
                            dict(record),
                            self.current_front(space, algorithm),
                            state_bytes if state_bytes is not None else cloudpickle.dumps(st),
                            self.population(space, algorithm),
                        )
                    )
                if progress:
                    progress(report)
            st.outcomes.append(
                StageOutcome(
                    stage,
                    self.front(space, algorithm),
                    tuple(self.population(space, algorithm)),
                    space.decode(self._baseline_genes(space)),
                )
            )
            st.stage_index += 1
            st.algorithm = None
            st.space = None
            self._save()
        final = st.outcomes[-1].front
        meeting = [s for s in final if s.meets_target]
        recommended = meeting[0] if meeting else min(final, key=lambda s: s.gap)
        refitted: list[Scored] = []
        rescored: list[Scored] = []
        finalists: list[Scored] = []
        top = self.settings.refit_top or self.settings.rescore_top
        if top and meeting:
            # The engine scores masks from dense statistics; the shipped model is pruned with
            # statistics from its pruned prefix (and maybe refit), which ranks close genomes
            # differently, so the best few are re-scored as they will be shipped.
            finalists = self._finalists(st.outcomes[-1], top)
            evals = self.evaluator.shipped(
                [s.candidate for s in finalists], refit=bool(self.settings.refit_top)
            )
            shipped = sorted(
                (Scored(s.candidate, e, s.gap) for s, e in zip(finalists, evals, strict=True)),
                key=lambda s: s.evaluation.error,
            )
            recommended = shipped[0]
            if self.settings.refit_top:
                refitted = shipped
            else:
                rescored = shipped
        baselines = self.baselines()
        return SearchResult(
            self.settings,
            st.outcomes,
            recommended,
            st.history,
            st.evaluations,
            st.cache_hits,
            time.perf_counter() - clock,
            refitted,
            rescored,
            finalists,
            baselines,
        )

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
        return plan_gap(candidate.ratios, self.block_params, self.settings.target)

    def baselines(self) -> list[Baseline]:
        """Wanda with the uniform plan, and OWL+Wanda where the evaluator can plan OWL.

        Wanda's genome with the uniform plan starts every metric stage, so its full evaluation
        is usually cached already. OWL needs dense statistics, which only the evaluator holds,
        and only an unstructured pattern lets blocks differ. Magnitude pruning is no genome of
        the meta-metric space (every genome is weighted by activations), so it is not reported.
        """
        s = self.settings
        named = [("Wanda", Candidate(WANDA_GENOME, (s.target,) * len(self.block_params)))]
        if not s.pattern.structured and isinstance(self.evaluator, OwlPlanner):
            owl = tuple(float(r) for r in self.evaluator.owl_ratios(s.target))
            named.append(("OWL+Wanda", Candidate(WANDA_GENOME, owl)))
        evals = self.ensure_full([c for _, c in named])
        return [
            Baseline(c, e, self._gap(c), name) for (name, c), e in zip(named, evals, strict=True)
        ]

    def _save(self) -> bytes | None:
        if self.path is None:
            return None
        data = cloudpickle.dumps(self.state)
        tmp = self.path.with_name(self.path.name + ".tmp")  # atomic, as in save_state
        tmp.write_bytes(data)
        tmp.replace(self.path)
        return data


def run_search(
    evaluator: BatchEvaluator,
    settings: SearchSettings,
    *,
    state_path: Path | None = None,
    resume: bool = False,
    progress: Callable[[SearchProgress], None] | None = None,
    on_generation: Callable[[GenerationSnapshot], None] | None = None,
    resume_from: bytes | None = None,
) -> SearchResult:
    """Run (or, with `resume`, continue) a search; state is saved after every generation.

    `on_generation` receives each completed generation's snapshot (progress, current front and
    serialized state) before `progress` is called; `resume_from` continues from such a
    snapshot's `state` instead of from `state_path`.
    """
    if resume_from is not None:
        state = _state_from_bytes(resume_from, settings, "the given state")
        logger.info("resuming after %d completed generations", len(state.history))
    elif resume and state_path is not None and state_path.is_file():
        state = load_state(state_path, settings)
        logger.info("resuming after %d completed generations", len(state.history))
    else:
        state = _State(settings)
    return _Search(evaluator, state, state_path, on_generation).run(progress)
