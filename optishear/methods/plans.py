"""Layer-wise sparsity plans: uniform, OWL (outlier-weighted), or an explicit per-block or
per-layer list."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from optishear.core.errors import ConfigError

_TOL = 1e-6


@dataclass(frozen=True, slots=True)
class SparsityPlan:
    """The sparsity of every decoder block, and optionally of every linear layer.

    `layer_sparsity` maps (block, layer name) to the layer's own sparsity; the per-block
    values are then the layers' parameter-weighted means, for reports.
    """

    block_sparsity: tuple[float, ...]
    layer_sparsity: Mapping[tuple[int, str], float] | None = None

    def ratio(self, block: int, layer: str | None = None) -> float:
        if self.layer_sparsity is not None and layer is not None:
            return self.layer_sparsity[(block, layer)]
        return self.block_sparsity[block]

    def weighted_mean(self, block_params: Sequence[int]) -> float:
        total = sum(block_params)
        return sum(r * p for r, p in zip(self.block_sparsity, block_params, strict=True)) / total


def uniform_plan(n_blocks: int, target: float) -> SparsityPlan:
    return SparsityPlan((target,) * n_blocks)


def explicit_plan(
    ratios: Sequence[float], block_params: Sequence[int], target: float | None
) -> SparsityPlan:
    """A user's per-block list; its parameter-weighted mean must equal `target` if one is set."""
    if len(ratios) != len(block_params):
        raise ConfigError(
            f"the plan lists {len(ratios)} sparsities but the model has {len(block_params)} blocks"
        )
    plan = SparsityPlan(tuple(float(r) for r in ratios))
    mean = plan.weighted_mean(block_params)
    if target is not None and abs(mean - target) > 1e-4:
        raise ConfigError(
            f"the per-block sparsities average {mean:.4f} (weighted by parameters), "
            f"not the target {target:.4f}"
        )
    return plan


def layer_plan(
    ratios: Sequence[float],
    layers: Sequence[tuple[int, str, int]],
    n_blocks: int,
    target: float | None,
) -> SparsityPlan:
    """A per-layer list over (block, name, weight count) in iter_linears order; its
    parameter-weighted mean must equal `target` if one is set."""
    if len(ratios) != len(layers):
        raise ConfigError(
            f"the plan lists {len(ratios)} per-layer sparsities but the model has "
            f"{len(layers)} prunable linear layers"
        )
    total = sum(n for _, _, n in layers)
    mean = sum(r * n for r, (_, _, n) in zip(ratios, layers, strict=True)) / total
    if target is not None and abs(mean - target) > 1e-4:
        raise ConfigError(
            f"the per-layer sparsities average {mean:.4f} (weighted by parameters), "
            f"not the target {target:.4f}"
        )
    pruned = [0.0] * n_blocks
    count = [0] * n_blocks
    for r, (b, _, n) in zip(ratios, layers, strict=True):
        pruned[b] += r * n
        count[b] += n
    blocks = tuple(p / c if c else 0.0 for p, c in zip(pruned, count, strict=True))
    mapping = {(b, name): float(r) for r, (b, name, _) in zip(ratios, layers, strict=True)}
    return SparsityPlan(blocks, mapping)


def rebalance(raw: Sequence[float], block_params: Sequence[int], target: float) -> SparsityPlan:
    """Shift raw ratios so their parameter-weighted mean is exactly `target`, within [0, 1)."""
    ratios = torch.tensor(raw, dtype=torch.float64)
    weights = torch.tensor(block_params, dtype=torch.float64)
    weights = weights / weights.sum()
    upper = 1.0 - 1e-3
    # Shift the blocks that can still move, clamp, and repeat until the mean is met.
    for _ in range(len(raw) + 1):
        gap = target - float((ratios * weights).sum())
        if abs(gap) < 1e-12:
            break
        movable = ratios < upper if gap > 0 else ratios > 0
        share = float(weights[movable].sum())
        if share == 0:
            break
        ratios = torch.where(movable, ratios + gap / share, ratios).clamp(0.0, upper)
    plan = SparsityPlan(tuple(float(r) for r in ratios))
    if abs(plan.weighted_mean(block_params) - target) > _TOL:
        raise ConfigError(f"cannot meet the target sparsity {target} with ratios in [0, 1)")
    return plan


def outlier_ratio(scores: Sequence[Tensor], m: float) -> float:
    """Share of a block's Wanda scores above m times their mean (OWL's layer outlier ratio)."""
    flat = torch.cat([s.flatten().float() for s in scores])
    return float((flat > m * flat.mean()).float().mean())


def owl_plan(
    outlier_ratios: Sequence[float], block_params: Sequence[int], target: float, lam: float
) -> SparsityPlan:
    """Blocks with more outliers keep more weights: sparsity spread over target +- lambda."""
    d = torch.tensor(outlier_ratios, dtype=torch.float64)
    span = float(d.max() - d.min())
    norm = (d - d.min()) / span if span > 0 else torch.zeros_like(d)
    raw = target + lam - 2 * lam * norm  # most outliers -> target - lambda
    return rebalance(raw.tolist(), block_params, target)
