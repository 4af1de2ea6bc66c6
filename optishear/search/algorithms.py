"""Each stage's space and pymoo algorithm: NSGA-III for the metric and per-block stages (SBX
and polynomial mutation, the balance repair), NSGA-III or (1+lambda) with the level-switch
mutation for the allocation stage, all seeded so that a resumed stage replays its tells."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from pymoo.algorithms.moo.nsga3 import NSGA3
from pymoo.core.algorithm import Algorithm
from pymoo.core.problem import Problem
from pymoo.operators.crossover.nox import NoCrossover
from pymoo.operators.crossover.sbx import SBX
from pymoo.operators.mutation.pm import PM
from pymoo.util.ref_dirs import get_reference_directions

from optishear.config import SearchConfig
from optishear.recipe.candidates import Candidate
from optishear.search.allocation import (
    AllocationSpace,
    LayerLayout,
    LevelSwitch,
    OnePlusLambda,
    mutate,
)
from optishear.search.evaluator import BatchEvaluator, OwlPlanner
from optishear.search.space import BalanceRepair, SearchSpace, Stage
from optishear.search.state import SearchState

Space = SearchSpace | AllocationSpace


class IntProblem(Problem):
    """pymoo's view of the space; objectives arrive through StaticProblem (ask/tell)."""

    def __init__(self, space: Space) -> None:
        xl, xu = space.bounds()
        super().__init__(n_var=space.n_var, n_obj=space.n_obj, xl=xl, xu=xu, vtype=int)


class StageBuilder:
    """Builds a stage's space and algorithm from the config and the search's state."""

    def __init__(self, config: SearchConfig, state: SearchState, evaluator: BatchEvaluator):
        self.config = config
        self.state = state
        self.evaluator = evaluator
        self.block_params = tuple(evaluator.block_params)

    def space(self, stage: Stage | str) -> Space:
        s = self.config
        uniform = (s.target,) * len(self.block_params)
        genome = (
            self.state.outcomes[-1].front[0].candidate.genome if self.state.outcomes else s.genome
        )
        if stage == "allocation":
            layout = LayerLayout.of(self.evaluator.layer_layout)
            return AllocationSpace.build(s, layout, genome)
        return SearchSpace(
            stage,
            s.target,
            self.block_params,
            s.step,
            s.levels,
            genome,
            uniform if stage == "metric" else (),
            second_order=s.metric_space == "second_order",
        )

    def rng(self) -> np.random.Generator:
        return np.random.default_rng(self.config.seed + 7919 * self.state.stage_index)

    def _allocation(self, space: AllocationSpace) -> Algorithm:
        """(1+lambda) from the start candidates, or NSGA-III with the same mutation, no crossover.

        The start candidates are the uniform plan and, for an unstructured target, OWL's
        per-block plan carried to the layers (snapped to the levels, balanced to the exact
        budget): (1+lambda) takes the better as its first parent. NSGA-III starts from them and
        mutants; in front mode from every level's uniform plan (the sparsity axis covered from
        the first generation) and mutants.
        """
        s = self.config
        a = s.allocation
        rng = self.rng()
        start = space.start(rng)
        starts = [start]
        if space.mode == "exact" and isinstance(self.evaluator, OwlPlanner):
            owl = space.from_block_plan(self.evaluator.owl_plan(s.target), rng)
            if owl is not None and not np.array_equal(owl, start):
                starts.append(owl)
        mutation = LevelSwitch(space, a.max_moves)
        algorithm: Algorithm
        if a.selection == "one_plus_lambda":
            algorithm = OnePlusLambda(np.array(starts), mutation, s.population)
        else:
            seeds = starts
            if space.mode == "front":
                low, high = s.allocation.front or (0.0, 1.0)
                seeds = [space.uniform(r) for r in space.levels if low <= r <= high] or seeds
            init = [seeds[i % len(seeds)].copy() for i in range(s.population)]
            for i in range(len(seeds), s.population):
                mutate(space, init[i], 1 + i % a.max_moves, rng)
            ref_dirs = (
                get_reference_directions("das-dennis", 2, n_partitions=s.population - 1)
                if space.n_obj == 2
                else np.array([[1.0]])
            )
            algorithm = NSGA3(
                ref_dirs=ref_dirs,
                pop_size=s.population,
                sampling=np.array(init, dtype=float),
                crossover=NoCrossover(),
                mutation=mutation,
                eliminate_duplicates=True,
            )
        return self._set_up(algorithm, space)

    def _set_up(self, algorithm: Algorithm, space: Space) -> Algorithm:
        """The stage's problem, generations and seed: what replaying a stage relies on."""
        s = self.config
        algorithm.setup(
            IntProblem(space),
            termination=("n_gen", s.generations),
            seed=s.seed + self.state.stage_index,
            verbose=False,
        )
        return algorithm

    def algorithm(self, space: Space, screened: Sequence[Candidate] = ()) -> Algorithm:
        """The stage's pymoo algorithm; a metric stage starts from the baseline, the given seed
        genomes and `screened` (the screen's survivors, best first)."""
        if isinstance(space, AllocationSpace):
            return self._allocation(space)
        s = self.config
        if space.n_obj == 1:
            ref_dirs = np.array([[1.0]])
        else:
            ref_dirs = get_reference_directions("das-dennis", 2, n_partitions=s.population - 1)
        xl, xu = space.bounds()
        rng = self.rng()
        init = rng.integers(xl, xu + 1, size=(s.population, space.n_var)).astype(float)
        init[0] = self.baseline_genes(space)  # the search starts from the baseline
        if space.has_metric:
            # then from the given seed genomes and the screen's survivors, best first
            plan = (s.target,) * len(self.block_params)
            seeds = [Candidate(g, plan) for g in s.seed_genomes] + list(screened)
            rows = {tuple(init[0])}
            i = 1
            for c in seeds:
                genes = tuple(float(v) for v in space.genes(c))
                if i >= s.population:
                    break
                if genes not in rows:
                    rows.add(genes)
                    init[i] = genes
                    i += 1
        algorithm = NSGA3(
            ref_dirs=ref_dirs,
            pop_size=s.population,
            sampling=init,
            crossover=SBX(prob=0.9, eta=15, vtype=float),
            mutation=PM(eta=20, vtype=float),
            repair=BalanceRepair(space),
            eliminate_duplicates=True,
        )
        return self._set_up(algorithm, space)

    def baseline_genes(self, space: Space) -> np.ndarray:
        if isinstance(space, AllocationSpace):
            return space.start(self.rng()).astype(float)
        plan = (space.target,) * space.n_blocks
        return np.array(space.genes(Candidate(space.genome, plan)), dtype=float)
