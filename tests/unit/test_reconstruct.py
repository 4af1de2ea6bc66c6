"""Weight reconstruction after masking: a fixed mask, survivors updated to cut output error."""

import pytest
import torch
from pydantic import ValidationError
from tiny_models import build_tiny

from optishear.config import PruneConfig
from optishear.core.errors import ConfigError
from optishear.core.patterns import Pattern
from optishear.methods.masks import prune_mask
from optishear.methods.metrics import wanda_score
from optishear.methods.sparsegpt import sparsegpt_prune
from optishear.model.blocks import iter_linears
from optishear.recipe.prune import prune_model
from optishear.refit.reconstruct import least_squares_refit

PATTERNS = [Pattern(), Pattern(2, 4), Pattern(4, 8)]


def _correlated_inputs(n: int, d: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    # channels driven by fewer factors, as real activations are: survivors can stand in for
    # pruned weights, which is what the update exploits
    factors = torch.randn(n, d // 2, generator=g) @ torch.randn(d // 2, d, generator=g)
    return factors + 0.1 * torch.randn(n, d, generator=g)


@pytest.mark.parametrize("pattern", PATTERNS, ids=str)
def test_fixed_mask_update_lowers_layer_error_and_keeps_the_mask(pattern) -> None:
    g = torch.Generator().manual_seed(0)
    W = torch.randn(48, 64, generator=g)
    X = _correlated_inputs(512, 64, seed=1)  # (tokens, d_in)
    H = 2 * X.T @ X / X.shape[0]
    mask = prune_mask(wanda_score(W, X.pow(2).sum(0)), 0.5, pattern)

    masked = W.masked_fill(mask, 0.0)
    obs = W.clone()
    assert torch.equal(sparsegpt_prune(obs, H, 0.5, pattern, fixed_mask=mask), mask)
    refit = W.clone()
    least_squares_refit(refit, H, mask, percdamp=1e-4, solver="exact")

    ref = X @ W.T
    err = {
        name: float((X @ M.T - ref).norm())
        for name, M in [("masked", masked), ("obs", obs), ("refit", refit)]
    }
    for M in (obs, refit):
        assert torch.equal(M == 0, mask)  # pruned stay zero, no survivor lost
    assert err["obs"] < err["masked"]
    # the exact refit beats the one-pass OBS update by far when survivors can stand in
    assert err["refit"] < 0.3 * err["masked"]
    assert err["refit"] < 0.5 * err["obs"]
    # and it is the least-squares optimum: no small move of the survivors does better
    nudged = refit + 1e-2 * torch.randn(refit.shape, generator=g).masked_fill(mask, 0.0)
    assert float((X @ nudged.T - ref).norm()) > err["refit"]


def _kl_to(dense_logits: torch.Tensor, model, ids) -> float:
    with torch.no_grad():
        log_q = model(ids, use_cache=False).logits.log_softmax(-1)
    log_p = dense_logits.log_softmax(-1)
    return float((log_p.exp() * (log_p - log_q)).sum(-1).mean())


@pytest.mark.parametrize("pattern", PATTERNS, ids=str)
def test_prune_with_reconstruction_exact_sparsity_and_lower_error(pattern, calib_ids) -> None:
    dense = build_tiny("llama", layers=2)
    with torch.no_grad():
        dense_logits = dense(calib_ids, use_cache=False).logits
    plain, rec = build_tiny("llama", layers=2), build_tiny("llama", layers=2)
    prune_model(
        plain, calib_ids, PruneConfig(method="wanda", sparsity=0.5, pattern=pattern, batch_size=4)
    )
    report = prune_model(
        rec,
        calib_ids,
        PruneConfig(method="wanda", sparsity=0.5, pattern=pattern, batch_size=4, reconstruct=True),
    )
    assert report.achieved == 0.5
    assert report.to_dict()["reconstructed"] is True
    changed = 0
    for (idx, name, a), (_, _, b) in zip(iter_linears(plain), iter_linears(rec), strict=True):
        zeros = b.weight == 0
        assert int(zeros.sum()) == b.weight.numel() // 2
        if pattern.structured:
            assert (zeros.view(zeros.shape[0], -1, pattern.m).sum(-1) == pattern.n).all()
        if idx == 0 and name in ("self_attn.q_proj", "mlp.gate_proj"):
            # the first block sees the same inputs: the mask is Wanda's, only survivors move
            assert torch.equal(zeros, a.weight == 0)
        changed += int((a.weight != b.weight).sum())
    assert changed > 0
    assert _kl_to(dense_logits, rec, calib_ids) < _kl_to(dense_logits, plain, calib_ids)


def test_reconstruct_is_refused_where_it_means_nothing() -> None:
    with pytest.raises(ValidationError, match="sparsegpt always reconstructs"):
        PruneConfig(method="sparsegpt", sparsity=0.5, reconstruct=True)
    with pytest.raises(ValidationError, match="magnitude"):
        PruneConfig(method="magnitude", sparsity=0.5, reconstruct=True)


def test_refit_on_too_few_tokens_warns(calib_ids, caplog) -> None:
    model = build_tiny("llama")  # widest layer: 64 inputs; calib_ids hold 8 x 24 = 192 tokens
    with caplog.at_level("WARNING", logger="optishear.recipe.prune"):
        prune_model(model, calib_ids, PruneConfig(method="wanda", sparsity=0.5, reconstruct=True))
    assert "192 calibration tokens for layers with up to 64 inputs" in caplog.text
    caplog.clear()
    many = torch.randint(0, 128, (16, 24), generator=torch.Generator().manual_seed(2))
    with caplog.at_level("WARNING", logger="optishear.recipe.prune"):
        prune_model(
            build_tiny("llama"), many, PruneConfig(method="wanda", sparsity=0.5, reconstruct=True)
        )
    assert "calibration tokens" not in caplog.text


@pytest.mark.parametrize("pattern", PATTERNS, ids=str)
def test_conjugate_gradients_reach_the_exact_solve(pattern) -> None:
    g = torch.Generator().manual_seed(3)
    W = torch.randn(96, 128, generator=g)
    X = _correlated_inputs(1024, 128, seed=4)
    X[:, :3] *= 30  # outlier channels make the system ill-conditioned, as in LLMs
    H = 2 * X.T @ X / X.shape[0]
    mask = prune_mask(wanda_score(W, X.pow(2).sum(0)), 0.5, pattern)
    exact, cg = W.clone(), W.clone()
    assert least_squares_refit(exact, H, mask, solver="exact") == 0
    iterations = least_squares_refit(cg, H, mask, solver="cg")
    assert 0 < iterations < 200
    assert torch.equal(cg == 0, mask)
    ref = X @ W.T

    def err(M: torch.Tensor) -> float:
        return float((X @ M.T - ref).norm())

    assert err(cg) == pytest.approx(err(exact), rel=1e-2)  # at the default tolerance
    assert err(cg) < 0.6 * err(W.masked_fill(mask, 0.0))
    tight = W.clone()
    least_squares_refit(tight, H, mask, solver="cg", tol=1e-5)
    assert err(tight) == pytest.approx(err(exact), rel=1e-4)
    # A looser tolerance stops earlier, further from the optimum.
    loose = W.clone()
    assert least_squares_refit(loose, H, mask, solver="cg", tol=1e-1) < iterations
    assert err(loose) >= err(cg)


def test_conjugate_gradients_take_masks_of_any_shape() -> None:
    g = torch.Generator().manual_seed(5)
    W = torch.randn(16, 32, generator=g)
    X = _correlated_inputs(256, 32, seed=6)
    H = X.T @ X
    mask = torch.rand(16, 32, generator=g) < 0.5  # rows keep different numbers of weights
    mask[0] = True  # and one row keeps none
    cg = W.clone()
    least_squares_refit(cg, H, mask, solver="cg")
    assert torch.equal(cg == 0, mask | (W == 0))
    assert float((X @ (cg - W).T).norm()) < float((X @ W.masked_fill(mask, 0.0).T - X @ W.T).norm())
    with pytest.raises(ConfigError, match="same number of survivors"):
        least_squares_refit(W.clone(), H, mask, solver="exact")


def test_conjugate_gradients_from_a_nearby_solution_take_fewer_steps() -> None:
    g = torch.Generator().manual_seed(7)
    W = torch.randn(64, 128, generator=g)
    X = _correlated_inputs(1024, 128, seed=8)
    H = 2 * X.T @ X / X.shape[0]
    mask = prune_mask(wanda_score(W, X.pow(2).sum(0)), 0.5, Pattern())
    near = W.clone()
    least_squares_refit(near, H, mask, percdamp=0.01)
    cold, warm = W.clone(), W.clone()
    cold_steps = least_squares_refit(cold, H, mask, percdamp=0.001)
    warm_steps = least_squares_refit(warm, H, mask, percdamp=0.001, start=near)
    assert warm_steps < cold_steps
    assert torch.equal(warm == 0, mask)
    ref = X @ W.T

    def err(M: torch.Tensor) -> float:
        return float((X @ M.T - ref).norm())

    assert err(warm) == pytest.approx(err(cold), rel=1e-3)
