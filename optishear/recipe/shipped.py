"""The prune that ships a searched candidate: its genome, its plan, the search's update of the
survivors, as one PruneConfig; every shipped model is made by it.

The CLI's search export, the runner's checkpoint export, the fitness engine's as-shipped re-score
and the benchmarks all build their model from `shipped_config`, so that what the search scored
is what a user downloads.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from torch import Tensor, nn

from optishear.config import PlanConfig, PruneConfig, Update
from optishear.core.patterns import Pattern
from optishear.model.blocks import block_param_counts, iter_linears
from optishear.recipe.candidates import Candidate
from optishear.recipe.prune import ProgressFn, PruneReport, prune_model


def shipped_config(
    candidate: Candidate,
    pattern: Pattern,
    block_params: Sequence[int],
    *,
    update: Update = "none",
    method: Literal["meta", "sparsegpt"] = "meta",
    stats: Literal["pruned", "dense"] = "pruned",
    batch_size: int = 8,
    layer_numel: Sequence[int] | None = None,
    refit_holdout: int = 0,
) -> PruneConfig:
    """The prune that ships a candidate: its genome, its plan when the blocks differ, and the
    `update` of the survivors that scored it (optishear.config.SearchConfig.shipped_update).

    The target is the plan's parameter-weighted mean, so a searched plan is kept as it is; a
    per-layer candidate ships its per-layer plan (`layer_numel` weighs its mean).
    """
    ratios = candidate.block_sparsity
    if candidate.layer_sparsity and len(set(candidate.layer_sparsity)) > 1:
        assert layer_numel is not None, "a per-layer plan is weighed by its layers' sizes"
        layers = candidate.layer_sparsity
        target = sum(r * n for r, n in zip(layers, layer_numel, strict=True)) / sum(layer_numel)
        plan = PlanConfig(kind="explicit", linear_sparsity=layers)
    elif len(set(ratios)) == 1:
        plan, target = PlanConfig(), ratios[0]
    else:
        target = sum(r * w for r, w in zip(ratios, block_params, strict=True)) / sum(block_params)
        plan = PlanConfig(kind="explicit", block_sparsity=ratios)
    return PruneConfig(
        method=method,
        sparsity=target,
        pattern=pattern,
        plan=plan,
        genome=candidate.genome if method == "meta" else None,
        stats=stats,
        batch_size=batch_size,
        reconstruct=update == "lstsq",
        obs_update=update == "obs",
        refit_holdout=refit_holdout if update == "lstsq" else 0,
    )


def prune_candidate(
    model: nn.Module,
    calib_ids: Tensor,
    candidate: Candidate,
    pattern: Pattern,
    *,
    update: Update = "none",
    method: Literal["meta", "sparsegpt"] = "meta",
    stats: Literal["pruned", "dense"] = "pruned",
    batch_size: int = 8,
    progress: ProgressFn | None = None,
    refit_holdout: int = 0,
) -> PruneReport:
    """Prune `model` in place as a candidate ships: the one recipe of every shipped model.

    The CLI's search export, the runner's checkpoint export, the fitness engine's as-shipped
    re-score and the benchmarks all build their model here: the candidate's genome with
    statistics from the pruned prefix (or `stats="dense"`), its per-block plan, and its
    `update` of the surviving weights: none, SparseGPT's OBS step or a least-squares refit
    (`method="sparsegpt"`: SparseGPT chooses the masks and updates, with the candidate's plan).
    """
    config = shipped_config(
        candidate,
        pattern,
        block_param_counts(model),
        update=update,
        method=method,
        stats=stats,
        batch_size=batch_size,
        layer_numel=[lin.weight.numel() for _, _, lin in iter_linears(model)],
        refit_holdout=refit_holdout,
    )
    return prune_model(model, calib_ids, config, progress=progress)
