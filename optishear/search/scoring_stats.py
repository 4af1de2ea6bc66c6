"""The statistics a fitness engine scores masks with: per layer, of the dense model or of a
stand-in for every candidate's pruned prefix (Wanda's model at the target)."""

from __future__ import annotations

import logging

import torch
from torch import Tensor, nn

from optishear.config import PruneConfig
from optishear.core.heartbeat import Heartbeat
from optishear.core.patterns import Pattern
from optishear.methods.sparsegpt import hessian_rho
from optishear.methods.stats import LayerStats
from optishear.model.backup import restored_after
from optishear.model.blocks import capture_block_inputs, decoder_blocks
from optishear.recipe.prune import ProgressFn, PrunedStats, collect_dense_stats, prune_model

logger = logging.getLogger(__name__)

Layers = list[tuple[int, str, nn.Linear]]  # (block index, name, linear), iter_linears order


@torch.no_grad()
def layer_stats(
    model: nn.Module,
    calib_ids: Tensor,
    layers: Layers,
    batch_size: int,
    *,
    hessian: bool = False,
    keep: bool = False,
    progress: ProgressFn | None = None,
) -> list[LayerStats]:
    """Per layer, the input statistics of the model as its weights are now.

    Without `keep`, each block's Hessians are reduced to their rho as soon as the block is
    done: only the refit of a layer database needs whole Hessians.
    """
    inputs = capture_block_inputs(model, calib_ids, batch_size)
    on_block = None if keep or not hessian else _keep_rho_only
    stats = collect_dense_stats(
        model, inputs, hessian=hessian, on_block=on_block, progress=progress
    )
    return [stats[idx][name] for idx, name, _ in layers]


def baseline_stats(
    model: nn.Module,
    calib_ids: Tensor,
    layers: Layers,
    dense: list[Tensor],
    pattern: Pattern,
    target: float,
    batch_size: int,
    *,
    hessian: bool = False,
    keep: bool = False,
    progress: ProgressFn | None = None,
) -> list[LayerStats]:
    """Statistics of the model pruned by Wanda at `target`; the dense weights come back.

    Below N/M (N:M with dense exceptions) the stand-in is Wanda at N:M everywhere. Wanda's
    prune is sequential, so its last run of each pruned block records them (no second pass).
    """
    if pattern.structured:
        target = pattern.sparsity
    config = PruneConfig(method="wanda", sparsity=target, pattern=pattern, batch_size=batch_size)
    assert config.stats == "pruned"  # the prune runs every pruned block, the last one included
    recorded = PrunedStats(hessian, None if keep or not hessian else _keep_rho_only)
    with restored_after(dense):
        prune_model(model, calib_ids, config, pruned_stats=recorded, progress=progress)
    return [recorded.blocks[idx][name] for idx, name, _ in layers]


def engine_stats(
    model: nn.Module,
    calib_ids: Tensor,
    layers: Layers,
    dense: list[Tensor],
    pattern: Pattern,
    batch_size: int,
    *,
    baseline_at: float | None,
    hessian: bool,
    keep: bool,
) -> tuple[list[LayerStats] | None, list[LayerStats]]:
    """The dense statistics (None where nothing needs them) and those the masks are scored
    with: the dense ones, or with `baseline_at` those of Wanda's model at that target.

    Dense statistics also give OWL its plan (unstructured only): an N:M search on Wanda's
    statistics skips that forward pass. Hessians go with the scoring statistics.
    """
    dense_pass = baseline_at is None or not pattern.structured
    n_blocks = len(decoder_blocks(model))
    # minutes with a large calibration: a log that is not a terminal hears of it every 30 s
    beat = Heartbeat(
        logger,
        "the engine's statistics (blocks run)",
        n_blocks * (int(dense_pass) + (baseline_at is not None)),
    )
    dense_stats = None
    if dense_pass:
        dense_stats = layer_stats(
            model,
            calib_ids,
            layers,
            batch_size,
            hessian=hessian and baseline_at is None,
            keep=keep,
            progress=lambda done, _total, _what: beat.step(done),
        )
    if baseline_at is None:
        assert dense_stats is not None
        return dense_stats, dense_stats
    offset = beat.finished
    scoring = baseline_stats(
        model,
        calib_ids,
        layers,
        dense,
        pattern,
        baseline_at,
        batch_size,
        hessian=hessian,
        keep=keep,
        progress=lambda done, _total, _what: beat.step(offset + done),
    )
    return dense_stats, scoring


def stacked(groups: list[list[int]], per_layer: list[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
    """One stack per group of equally shaped layers (copies), and per layer a view into it."""
    stacks = [torch.stack([per_layer[pos] for pos in group]) for group in groups]
    views: list[Tensor] = [torch.empty(0)] * len(per_layer)
    for group, stack in zip(groups, stacks, strict=True):
        for j, pos in enumerate(group):
            views[pos] = stack[j]
    return stacks, views


def _keep_rho_only(stats: dict[str, LayerStats]) -> None:
    for s in stats.values():
        s.rho = hessian_rho(s.hessian)
        s.xtx = None
