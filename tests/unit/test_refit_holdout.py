"""The refit's damping chosen per layer on held-aside calibration sequences."""

from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError
from tiny_models import build_tiny

from optishear.config import PruneConfig
from optishear.core.errors import ConfigError
from optishear.core.patterns import Pattern
from optishear.methods.masks import prune_mask
from optishear.methods.stats import LayerStats
from optishear.recipe.prune import prune_model
from optishear.refit.reconstruct import least_squares_refit
from optishear.refit.update import DAMPINGS, SurvivorUpdate


def test_held_sequences_give_no_statistics_only_their_gram() -> None:
    x = torch.randn(8, 5, 6, generator=torch.Generator().manual_seed(0))
    stats = LayerStats(6, "cpu", hessian=True, holdout=4)
    for batch in (x[:3], x[3:6], x[6:]):  # uneven batches: the count runs across them
        stats.update(batch)
    held, kept = x[[3, 7]], x[[0, 1, 2, 4, 5, 6]]
    flat = kept.reshape(-1, 6)
    assert (stats.n_seqs, stats.n_held, stats.n_tokens) == (6, 2, 30)
    torch.testing.assert_close(stats.xtx, flat.T @ flat)
    torch.testing.assert_close(stats.sq_sum, flat.pow(2).sum(0))
    h = held.reshape(-1, 6)
    torch.testing.assert_close(stats.held_gram, h.T @ h / 2)
    plain = LayerStats(6, "cpu", hessian=True)
    plain.update(x)
    assert plain.held_gram is None
    assert plain.n_seqs == 8


def _layer(seed: int, tokens: int):  # type: ignore[no-untyped-def]
    g = torch.Generator().manual_seed(seed)
    weight = torch.randn(16, 32, generator=g)
    # correlated inputs: a few directions dominate, as in a transformer's activations
    mix = torch.randn(32, 32, generator=g) * torch.logspace(0, -2, 32)
    fit = torch.randn(tokens, 32, generator=g) @ mix
    held = torch.randn(4096, 32, generator=g) @ mix
    mask = prune_mask(weight.abs() * fit.pow(2).sum(0).sqrt(), 0.5, Pattern.parse("2:4"))
    return weight, fit.T @ fit, held.T @ held, mask


def _held_error(weight, dense, held) -> float:  # type: ignore[no-untyped-def]
    diff = weight - dense
    return float(((diff @ held) * diff).sum())


@pytest.mark.parametrize("tokens", [24, 4096])
def test_chosen_damping_is_the_best_of_the_grid_on_held_inputs(tokens) -> None:
    dense, fit, held, mask = _layer(1, tokens)
    weight = dense.clone()
    update = SurvivorUpdate("lstsq")
    chosen = update.apply(weight, dense, fit, mask, 0.5, Pattern.parse("2:4"), held)
    assert chosen in DAMPINGS
    assert bool((weight[mask] == 0).all())
    errors = {}
    for damping in DAMPINGS:
        w = dense.clone()
        least_squares_refit(w, fit, mask, percdamp=damping)
        errors[damping] = _held_error(w, dense, held)
    assert chosen == min(errors, key=errors.__getitem__)
    # the chosen solve started from the next stronger damping's solution, these from the dense
    # survivors: two points within CG's tolerance of the same solution
    assert _held_error(weight, dense, held) == pytest.approx(errors[chosen], rel=1e-4)
    if tokens == 24:  # fewer tokens than inputs: the exact fit overfits, damping helps
        assert chosen > DAMPINGS[0]
        assert errors[chosen] < errors[0.01]


def test_prune_model_reports_each_layers_damping(calib_ids) -> None:
    model = build_tiny("llama", layers=2)
    config = PruneConfig(method="wanda", sparsity=0.5, reconstruct=True, refit_holdout=4)
    report = prune_model(model, calib_ids, config)
    assert report.achieved == 0.5
    layers = report.to_dict()["layers"]
    assert layers
    assert all(r["refit_damping"] in DAMPINGS for r in layers)
    fixed = prune_model(
        build_tiny("llama", layers=2),
        calib_ids,
        PruneConfig(method="wanda", sparsity=0.5, reconstruct=True),
    )
    assert all(r.refit_damping is None for r in fixed.layers)


def test_holdout_is_refused_where_it_means_nothing(calib_ids) -> None:
    with pytest.raises(ValidationError, match="needs reconstruct"):
        PruneConfig(method="wanda", sparsity=0.5, refit_holdout=4)
    with pytest.raises(ValidationError, match="needs reconstruct"):
        PruneConfig(method="wanda", sparsity=0.5, reconstruct=True, stats="dense", refit_holdout=4)
    with pytest.raises(ValidationError, match="use 0 or >= 2"):
        PruneConfig(method="wanda", sparsity=0.5, reconstruct=True, refit_holdout=1)
    config = PruneConfig(method="wanda", sparsity=0.5, reconstruct=True, refit_holdout=16)
    with pytest.raises(ConfigError, match="8 sequences hold none; give at least 16"):
        prune_model(build_tiny("llama", layers=2), calib_ids, config)
