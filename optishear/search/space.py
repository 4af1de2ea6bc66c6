"""The search space: integer genes for the metric genome and per-block sparsity offsets."""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from pymoo.core.repair import Repair

from optishear.core.errors import ConfigError
from optishear.core.genome import COEFFICIENTS, HESSIAN_TERMS, TRANSFORMS, WANDA_GENOME, Genome
from optishear.recipe.candidates import Candidate

Stage = Literal["metric", "layerwise", "joint"]


@dataclass(frozen=True)
class SearchSpace:
    """Genes: [f1, f2, alpha, beta(, h)] (metric), one offset per block (layerwise), or both.

    A block's sparsity is target + step * offset with offset in -levels..levels, as in the
    paper's {s - step, s, s + step} for levels = 1.
    """

    stage: Stage
    target: float
    block_params: tuple[int, ...]
    step: float = 0.05
    levels: int = 1
    genome: Genome = WANDA_GENOME  # fixed genome of a layerwise-only stage
    block_sparsity: tuple[float, ...] = field(default_factory=tuple)  # fixed plan of a metric stage
    second_order: bool = False  # the metric genes include h (optishear.core.genome)

    def __post_init__(self) -> None:
        if self.stage not in ("metric", "layerwise", "joint"):
            raise ConfigError(f"stage must be metric, layerwise or joint, got {self.stage!r}")
        if self.stage != "metric":
            lo, hi = self.target - self.levels * self.step, self.target + self.levels * self.step
            if self.levels < 1 or self.step <= 0 or lo < 0 or hi >= 1:
                raise ConfigError(
                    f"per-block sparsity {self.target} +- {self.levels} x {self.step} must stay "
                    "within [0, 1)"
                )
        elif len(self.block_sparsity) != len(self.block_params):
            raise ConfigError("a metric stage needs a fixed per-block plan")

    @property
    def n_blocks(self) -> int:
        return len(self.block_params)

    @property
    def has_metric(self) -> bool:
        return self.stage in ("metric", "joint")

    @property
    def has_blocks(self) -> bool:
        return self.stage in ("layerwise", "joint")

    @property
    def n_metric(self) -> int:
        """Metric genes: 4 first-order ones, and h in the second-order space."""
        if not self.has_metric:
            return 0
        return 5 if self.second_order else 4

    @property
    def n_var(self) -> int:
        return self.n_metric + (self.n_blocks if self.has_blocks else 0)

    @property
    def n_obj(self) -> int:
        """Reconstruction error, plus the sparsity gap when the plan is searched."""
        return 2 if self.has_blocks else 1

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        xl: list[int] = []
        xu: list[int] = []
        if self.has_metric:
            xl += [0] * self.n_metric
            xu += [
                len(TRANSFORMS) - 1,
                len(TRANSFORMS) - 1,
                len(COEFFICIENTS) - 1,
                len(COEFFICIENTS) - 1,
            ][: self.n_metric] + ([len(HESSIAN_TERMS) - 1] if self.second_order else [])
        if self.has_blocks:
            xl += [0] * self.n_blocks
            xu += [2 * self.levels] * self.n_blocks
        return np.array(xl), np.array(xu)

    def decode(self, x: np.ndarray) -> Candidate:
        x = np.asarray(x).round().astype(int)
        genome = Genome(*(int(v) for v in x[: self.n_metric])) if self.has_metric else self.genome
        if self.has_blocks:
            offsets = x[self.n_metric :]
            plan = tuple(self.target + self.step * (int(o) - self.levels) for o in offsets)
        else:
            plan = self.block_sparsity
        return Candidate(genome, plan)

    def gap(self, candidate: Candidate) -> float:
        return plan_gap(candidate.block_sparsity, self.block_params, self.target)

    def genes(self, candidate: Candidate) -> list[int]:
        """The genes that decode to `candidate` (its genome, and its plan as offsets)."""
        out: list[int] = []
        if self.has_metric:
            g = candidate.genome
            out += [g.f1, g.f2, g.alpha, g.beta] + ([g.h] if self.second_order else [])
        if self.has_blocks:
            out += [
                round((r - self.target) / self.step) + self.levels for r in candidate.block_sparsity
            ]
        return out

    def describe(self) -> dict[str, Any]:
        return {
            "stage": self.stage,
            "target": self.target,
            "step": self.step,
            "levels": self.levels,
            "n_var": self.n_var,
            "n_obj": self.n_obj,
        }


def plan_gap(block_sparsity: Sequence[float], block_params: Sequence[int], target: float) -> float:
    """|parameter-weighted mean sparsity - target| of a per-block plan."""
    p = np.asarray(block_params, dtype=np.float64)
    return abs(float(np.dot(block_sparsity, p) / p.sum()) - target)


def balance_offsets(
    offsets: np.ndarray, weights: np.ndarray, levels: int, rng: np.random.Generator
) -> np.ndarray:
    """Move offsets by single steps until their weighted sum is as close to 0 as it gets.

    Steps go preferably towards zero (the candidate stays close to what the operators made)
    and among equals in a random order, so repaired candidates keep their diversity.
    """
    o = offsets.astype(int).copy()
    w = weights.astype(np.float64)
    while True:
        gap = float(np.dot(o, w))
        if gap == 0:
            return o
        direction = -1 if gap > 0 else 1
        movable = np.flatnonzero((o + direction >= -levels) & (o + direction <= levels))
        improving = movable[np.abs(gap + direction * w[movable]) < abs(gap) - 1e-12]
        if improving.size == 0:
            return o
        toward_zero = improving[np.sign(o[improving]) == -direction]
        pool = toward_zero if toward_zero.size else improving
        o[rng.choice(pool)] += direction


class BalanceRepair(Repair):
    """Rounds genes to integers and balances block offsets so the target is met."""

    def __init__(self, space: SearchSpace) -> None:
        super().__init__()
        self.space = space

    def _do(self, problem: Any, X: np.ndarray, **kwargs: Any) -> np.ndarray:  # noqa: ARG002
        X = np.asarray(X, dtype=float).round()
        xl, xu = self.space.bounds()
        X = np.clip(X, xl, xu)
        if not self.space.has_blocks:
            return X
        start = self.space.n_metric
        weights = np.asarray(self.space.block_params, dtype=np.float64)
        weights = weights / weights.min()
        for row in X:
            # seeded by the row itself: deterministic, so that resumed searches match
            rng = np.random.default_rng(zlib.crc32(row.astype(np.int64).tobytes()))
            offsets = row[start:].astype(int) - self.space.levels
            row[start:] = (
                balance_offsets(offsets, weights, self.space.levels, rng) + self.space.levels
            )
        return X
