"""The allocation stage's space and operators: one sparsity level per linear layer.

A gene is a *unit* (one linear layer, or with granularity "part" the attention or the MLP of a
block) and its value an index into the ascending `levels`. The parameter budget is kept by the
mutation itself, never repaired afterwards (EvoPress, Sieberling et al. 2025, does the same):

- target mode, unstructured: a *level switch* moves units of one size a level up and units of
  another (or the same) size a level down, as many of each that the pruned-weight counts
  balance: one for one between equal sizes, one q_proj for 4 k_projs of a GQA model, 5 MLPs
  for 12 attentions, ... The count is unchanged, exactly, so every candidate has the target's
  level-weighted sparsity.
- N:M with dense exceptions (levels {0, N/M}): a move makes one dense unit pruned again and
  then random pruned units dense while the sparsity stays at or above the target.
- front mode (a sparsity range, NSGA-III): half the moves are level switches, the other half
  shift one unit a level, so that the population spreads along the sparsity axis.

`LevelSwitch` is a pymoo Mutation, so NSGA-III and `OnePlusLambda` (a pymoo Algorithm) use
the same operator; both are replayed from their seed on resume (optishear.search.state).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from pymoo.core.algorithm import Algorithm
from pymoo.core.mutation import Mutation
from pymoo.core.population import Population

from optishear.config import SearchConfig
from optishear.core.errors import ConfigError
from optishear.core.genome import Genome
from optishear.recipe.candidates import Candidate, block_means
from optishear.search.space import balance_offsets

_TRIES = 64  # attempts to find a feasible move before a mutant is left as it is
_MAX_UNITS = 16  # units one level switch may move (layers of coprime-ish sizes need many)
_TOL = 1e-9


@dataclass(frozen=True)
class LayerLayout:
    """The model's prunable linear layers, in `optishear.model.blocks.iter_linears` order."""

    numel: tuple[int, ...]
    block: tuple[int, ...]
    part: tuple[str, ...]  # "attn" or "mlp"

    @classmethod
    def of(cls, rows: Sequence[tuple[int, str, int]]) -> LayerLayout:
        """From (block, layer name, weight count) per layer."""
        return cls(
            tuple(n for _, _, n in rows),
            tuple(b for b, _, _ in rows),
            tuple(_part(name) for _, name, _ in rows),
        )


def _part(name: str) -> str:
    return (
        "mlp"
        if any(k in name for k in ("mlp", "ffn", "fc", "dense_4h", "feed_forward"))
        else ("attn")
    )


@dataclass(frozen=True)
class AllocationSpace:
    """Genes: a level index per unit; decode gives the candidate's per-layer sparsities."""

    genome: Genome
    target: float
    levels: tuple[float, ...]
    layout: LayerLayout
    units: tuple[tuple[int, ...], ...]  # the layers each gene sets
    mode: str  # "exact", "at_least" (N:M dense exceptions) or "front"

    @classmethod
    def build(cls, config: SearchConfig, layout: LayerLayout, genome: Genome) -> AllocationSpace:
        a = config.allocation
        if a.granularity == "layer":
            units = tuple((pos,) for pos in range(len(layout.numel)))
        else:
            groups: dict[tuple[int, str], list[int]] = {}
            for pos, (b, p) in enumerate(zip(layout.block, layout.part, strict=True)):
                groups.setdefault((b, p), []).append(pos)
            units = tuple(tuple(g) for g in groups.values())
        if a.front:
            mode = "front"
        elif config.pattern.structured:
            mode = "at_least"
        else:
            mode = "exact"
        levels = config.allocation_levels()
        if mode == "exact" and not any(abs(r - config.target) < _TOL for r in levels):
            raise ConfigError(f"the levels {levels} do not include the target {config.target:g}")
        return cls(genome, config.target, levels, layout, units, mode)

    @property
    def n_var(self) -> int:
        return len(self.units)

    @property
    def n_obj(self) -> int:
        return 2 if self.mode == "front" else 1

    @property
    def unit_numel(self) -> np.ndarray:
        return np.array([sum(self.layout.numel[p] for p in u) for u in self.units], dtype=np.int64)

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        return np.zeros(self.n_var, dtype=int), np.full(self.n_var, len(self.levels) - 1)

    def sparsity(self, x: np.ndarray) -> float:
        """The level-weighted sparsity of genes x (what the budget is about)."""
        r = np.asarray(self.levels)[np.asarray(x).round().astype(int)]
        w = self.unit_numel
        return float(np.dot(r, w) / w.sum())

    def decode(self, x: np.ndarray) -> Candidate:
        idx = np.asarray(x).round().astype(int)
        layer = [0.0] * len(self.layout.numel)
        for unit, i in zip(self.units, idx, strict=True):
            for pos in unit:
                layer[pos] = self.levels[int(i)]
        blocks = block_means(layer, self.layout.numel, self.layout.block)
        return Candidate(self.genome, blocks, tuple(layer))

    def gap(self, candidate: Candidate) -> float:
        """|level-weighted sparsity - target|, or in N:M mode how far below the target."""
        n = np.asarray(self.layout.numel, dtype=np.float64)
        s = float(np.dot(candidate.layer_sparsity, n) / n.sum())
        if self.mode == "at_least":
            return max(0.0, self.target - s)
        return abs(s - self.target)

    def uniform(self, level: float | None = None) -> np.ndarray:
        """Every unit at one level (the target's by default)."""
        want = self.target if level is None else level
        i = int(np.argmin([abs(r - want) for r in self.levels]))
        return np.full(self.n_var, i, dtype=int)

    def from_block_plan(
        self, block_sparsity: Sequence[float], rng: np.random.Generator
    ) -> np.ndarray | None:
        """Genes near a per-block plan (OWL's), every layer at its block's nearest level, then
        balanced by single level steps to the exact budget; None where it cannot be met."""
        if self.mode != "exact":
            return None
        levels = np.asarray(self.levels)
        centre = int(np.argmin(np.abs(levels - self.target)))
        x = np.empty(self.n_var, dtype=int)
        for u, unit in enumerate(self.units):
            want = float(np.mean([block_sparsity[self.layout.block[p]] for p in unit]))
            x[u] = int(np.argmin(np.abs(levels - want)))
        if not np.allclose(np.diff(levels), levels[1] - levels[0]):
            return None  # unequal steps (clipped at 0): offsets do not weigh alike
        span = min(centre, len(levels) - 1 - centre)
        offsets = np.clip(x - centre, -span, span)
        w = self.unit_numel
        g = np.gcd.reduce(w)
        balanced = balance_offsets(offsets, w // g, span, rng)
        if int(np.dot(balanced, w // g)) != 0:
            return None
        return balanced + centre

    def start(self, rng: np.random.Generator) -> np.ndarray:
        """The search's first candidate: uniform at the target; in N:M mode, every unit N:M and
        then the first units made dense while the budget allows (the usual hand-made choice:
        on SmolLM2 at 2:4 and 45% it measured 89.1 held-out perplexity, where a random dense
        set the search started from in 48 evaluations reached 104.1; bench/HISTORY.md)."""
        del rng  # the start is deterministic; the argument keeps one signature for all modes
        x = self.uniform(self.levels[-1] if self.mode == "at_least" else None)
        if self.mode == "at_least":
            _fill_dense(self, x, range(self.n_var))
        return x


def _fill_dense(space: AllocationSpace, x: np.ndarray, order: Sequence[int]) -> None:
    """Make units of `order` dense (level 0) while the sparsity stays at or above the target."""
    w = space.unit_numel.astype(np.float64)
    total = w.sum()
    pruned = float(np.dot(np.asarray(space.levels)[x], w))
    top = space.levels[-1]
    for u in order:
        if x[u] != 0 and (pruned - top * w[u]) / total >= space.target - _TOL:
            x[u] = 0
            pruned -= top * w[u]


def _switch(space: AllocationSpace, x: np.ndarray, rng: np.random.Generator) -> bool:
    """One exact level switch in place; False when none was found.

    b/g units of size a go one level the one way and a/g units of size b the other, for
    g = gcd(a, b): the pruned-weight count is unchanged exactly.
    Size pairs needing more than `_MAX_UNITS` units per move are not used.
    """
    w = space.unit_numel
    top = len(space.levels) - 1
    sizes = np.unique(w)
    for _ in range(_TRIES):
        d = 1 if rng.random() < 0.5 else -1
        size_a, size_b = (int(v) for v in rng.choice(sizes, size=2))
        g = math.gcd(size_a, size_b)
        n_a, n_b = size_b // g, size_a // g
        if size_a == size_b:
            n_a, n_b = 1, 1
        if n_a + n_b > _MAX_UNITS:
            continue
        up = np.flatnonzero((w == size_a) & (x + d >= 0) & (x + d <= top))
        if up.size < n_a:
            continue
        ups = rng.choice(up, size=n_a, replace=False)
        down = np.flatnonzero((w == size_b) & (x - d >= 0) & (x - d <= top))
        down = np.setdiff1d(down, ups)
        if down.size < n_b:
            continue
        downs = rng.choice(down, size=n_b, replace=False)
        x[ups] += d
        x[downs] -= d
        return True
    return False


def _dense_swap(space: AllocationSpace, x: np.ndarray, rng: np.random.Generator) -> bool:
    """N:M with dense exceptions: one dense unit pruned again, then others made dense."""
    dense = np.flatnonzero(x == 0)
    if dense.size:
        x[int(rng.choice(dense))] = len(space.levels) - 1
    before = x.copy()
    pruned = np.flatnonzero(x != 0)
    _fill_dense(space, x, rng.permutation(pruned))
    return dense.size > 0 or not np.array_equal(before, x)


def _shift(space: AllocationSpace, x: np.ndarray, rng: np.random.Generator) -> bool:
    """Front mode: one unit a level up or down, keeping the sparsity within the range."""
    low, high = space.levels[0], space.levels[-1]
    for _ in range(_TRIES):
        u = int(rng.integers(space.n_var))
        d = 1 if rng.random() < 0.5 else -1
        if not 0 <= x[u] + d < len(space.levels):
            continue
        x[u] += d
        if low - _TOL <= space.sparsity(x) <= high + _TOL:
            return True
        x[u] -= d
    return False


def mutate(space: AllocationSpace, x: np.ndarray, moves: int, rng: np.random.Generator) -> None:
    """Apply `moves` budget-keeping moves to genes x in place."""
    for _ in range(moves):
        if space.mode == "at_least":
            _dense_swap(space, x, rng)
        elif space.mode == "front" and rng.random() < 0.5:
            _shift(space, x, rng)
        else:
            _switch(space, x, rng)


class LevelSwitch(Mutation):
    """pymoo mutation: every individual gets 1 to `max_moves` budget-keeping moves."""

    def __init__(self, space: AllocationSpace, max_moves: int = 3) -> None:
        super().__init__(prob=1.0)
        self.space = space
        self.max_moves = max_moves

    def do(self, problem: Any, pop: Population, inplace: bool = True, *args: Any, **kwargs: Any):  # type: ignore[no-untyped-def]  # noqa: ARG002
        # Never in place: without crossover the offspring are the parents' own individuals,
        # and mutating them in place would change the population (and make every mutant a
        # duplicate of it).
        return super().do(problem, pop, False, *args, **kwargs)

    def _do(
        self,
        problem: Any,  # noqa: ARG002
        X: np.ndarray,
        *args: Any,  # noqa: ARG002
        random_state: Any = None,
        **kwargs: Any,  # noqa: ARG002
    ) -> np.ndarray:
        rng = random_state if random_state is not None else np.random.default_rng()
        X = np.asarray(X, dtype=float).round().astype(int)
        for row in X:
            mutate(self.space, row, int(rng.integers(1, self.max_moves + 1)), rng)
        return X.astype(float)


class OnePlusLambda(Algorithm):
    """(1+lambda) selection: the parent's `n_offspring` mutants, the best of them and the parent
    becomes the next parent (the parent stays on a tie). Single objective."""

    def __init__(
        self, starts: np.ndarray, mutation: Mutation, n_offspring: int, **kwargs: Any
    ) -> None:
        """`starts` (k, n_var): the first generation; the best of them is the first parent."""
        super().__init__(**kwargs)
        self.starts = np.atleast_2d(np.asarray(starts, dtype=float))
        self.mutation = mutation
        self.n_offspring = n_offspring

    def _initialize_infill(self) -> Population:
        return Population.new(X=self.starts)

    def _initialize_advance(self, infills: Population | None = None, **_: Any) -> None:
        assert infills is not None
        self.pop = infills[[int(np.argmin(infills.get("F")[:, 0]))]]

    def _infill(self) -> Population:
        X = np.repeat(self.pop.get("X"), self.n_offspring, axis=0)
        off = Population.new(X=X)
        return self.mutation.do(self.problem, off, random_state=self.random_state)

    def _advance(self, infills: Population | None = None, **_: Any) -> None:
        assert infills is not None
        F = infills.get("F")[:, 0]
        best = int(np.argmin(F))
        if F[best] < float(self.pop.get("F")[0, 0]):
            self.pop = infills[[best]]
