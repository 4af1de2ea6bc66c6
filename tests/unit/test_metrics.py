import math

import pytest
import torch

from optishear.core.errors import ConfigError, UnknownMethodError
from optishear.core.genome import N_FIRST_ORDER, N_GENOMES, WANDA_GENOME, Genome, canonical_genomes
from optishear.core.patterns import Pattern
from optishear.methods.masks import prune_mask
from optishear.methods.meta import meta_log_score
from optishear.methods.metrics import get_metric, ria_score, wanda_score
from optishear.methods.sparsegpt import damped_inverse, hessian_rho
from optishear.model.blocks import capture_block_inputs, iter_linears
from optishear.recipe.prune import collect_dense_stats


def test_unknown_metric() -> None:
    with pytest.raises(UnknownMethodError, match="unknown metric 'nope'"):
        get_metric("nope")


def test_ria_matches_definition() -> None:
    gen = torch.Generator().manual_seed(0)
    W = torch.randn(5, 7, generator=gen)
    x = torch.rand(7, generator=gen) + 0.1
    got = ria_score(W, x)
    for i in range(5):
        for j in range(7):
            a = abs(float(W[i, j]))
            rel = a / float(W[:, j].abs().sum()) + a / float(W[i, :].abs().sum())
            assert math.isclose(float(got[i, j]), rel * float(x[j]) ** 0.25, rel_tol=1e-5)


def test_genome_index_roundtrip_and_parse() -> None:
    seen = {Genome.from_index(i) for i in range(N_GENOMES)}
    assert len(seen) == N_GENOMES == 3 * N_FIRST_ORDER == 7203
    assert all(Genome.from_index(g.index) == g for g in seen)
    # the paper's first-order genomes keep their indices and spellings
    first = [g for g in seen if not g.second_order]
    assert len(first) == 2401
    assert max(g.index for g in first) == N_FIRST_ORDER - 1
    g = Genome.parse("f1=sqrt, beta=inv_col_sum")
    assert g.names() == {
        "f1": "sqrt",
        "f2": "identity",
        "alpha": "one",
        "beta": "inv_col_sum",
        "h": "none",
    }
    assert g.spec() == "f1=sqrt,f2=identity,alpha=one,beta=inv_col_sum"
    assert g.index == Genome(1, 0, 0, 2).index < N_FIRST_ORDER
    sgpt = Genome.parse("f2=square,h=rho")
    assert sgpt.second_order
    assert Genome.parse(sgpt.spec()) == sgpt
    assert sgpt.formula() == "|W| * X * rho"
    assert WANDA_GENOME.formula() == "|W| * sqrt(X)"
    for bad in ("f1=cube", "gamma=one", "f1", "h=rho3"):
        with pytest.raises(ConfigError):
            Genome.parse(bad)
    with pytest.raises(ConfigError):
        Genome(7, 0, 0, 0)


def _dense_stats(model, ids, *, hessian=False):
    inputs = capture_block_inputs(model, ids, batch_size=4)
    return collect_dense_stats(model, inputs, hessian=hessian)


def test_identity_genome_gives_wanda_masks(tiny_llama, calib_ids) -> None:
    stats = _dense_stats(tiny_llama, calib_ids)
    for idx, name, lin in iter_linears(tiny_llama):
        x = stats[idx][name].act_sq
        for pattern in (Pattern(), Pattern(2, 4)):
            wanda = prune_mask(wanda_score(lin.weight, x), 0.5, pattern)
            meta = prune_mask(meta_log_score(lin.weight, x, WANDA_GENOME), 0.5, pattern)
            assert torch.equal(wanda, meta), (idx, name, pattern)


@pytest.mark.parametrize("pattern", [Pattern(), Pattern(2, 4)])
def test_every_class_of_the_space_gives_a_valid_mask(tiny_llama, calib_ids, pattern) -> None:
    stats = _dense_stats(tiny_llama, calib_ids, hessian=True)
    # every kind of projection (attention q/k/v/o, mlp gate/up/down) of the first block
    layers = [
        (lin.weight, stats[i][n].act_sq, hessian_rho(stats[i][n].hessian))
        for i, n, lin in iter_linears(tiny_llama)
        if i == 0
    ]
    # an all-zero input channel and huge activations stress log(0), exp overflow and a
    # singular Hessian
    W0, x0, _ = layers[0]
    H0 = stats[0][next(iter(stats[0]))].hessian.clone() * 1e12
    H0[0, :] = 0
    H0[:, 0] = 0
    layers.append((W0, torch.cat([torch.zeros(1), x0[1:] * 1e6]), hessian_rho(H0)))
    classes = canonical_genomes()
    assert len(classes) == 3 * 324
    for genome in classes:
        for W, x, rho in layers:
            score = meta_log_score(W, x, genome, rho)
            assert torch.isfinite(score).all(), genome
            mask = prune_mask(score, 0.5, pattern)
            if pattern.structured:
                groups = mask.view(W.shape[0], -1, pattern.m).sum(-1)
                assert (groups == pattern.n).all(), genome
            else:
                assert (mask.sum(dim=1) == W.shape[1] // 2).all(), genome


def test_second_order_genomes_rank_as_obs_and_sparsegpt(tiny_llama, calib_ids) -> None:
    """|W| sqrt(X) rho^(1/2) ranks as w^2 / [H^-1]_jj (OBS), |W| X rho as w^2 / [H^-1]_jj^2."""
    stats = _dense_stats(tiny_llama, calib_ids, hessian=True)
    _, name, lin = next(iter_linears(tiny_llama))
    s = stats[0][name]
    hinv = torch.diag(damped_inverse(s.hessian)[0])
    W = lin.weight.detach().float()
    rho = hessian_rho(s.hessian)
    assert ((rho > 0) & (rho <= 1)).all()
    assert rho.min() < 0.999
    for spec, reference in (
        ("f2=identity,h=sqrt_rho", W.pow(2) / hinv),
        ("f2=square,h=rho", W.pow(2) / hinv.pow(2)),
    ):
        genome = Genome.parse(spec)
        got = prune_mask(meta_log_score(W, s.act_sq, genome, rho), 0.5, Pattern(2, 4))
        want = prune_mask(reference, 0.5, Pattern(2, 4))
        assert (got == want).float().mean() > 0.999, spec  # equal up to float ties
    with pytest.raises(ConfigError, match="second order"):
        meta_log_score(W, s.act_sq, Genome.parse("h=rho"))


def test_row_canonical_genomes_give_identical_masks(tiny_llama, calib_ids) -> None:
    stats = _dense_stats(tiny_llama, calib_ids, hessian=True)
    idx, name, lin = next(iter_linears(tiny_llama))
    x = stats[idx][name].act_sq
    rho = hessian_rho(stats[idx][name].hessian)
    canon = {Genome.from_index(i).row_canonical() for i in range(N_GENOMES)}
    assert len(canon) < N_GENOMES // 4
    gen = torch.Generator().manual_seed(0)
    for i in torch.randint(0, N_GENOMES, (150,), generator=gen).tolist():
        g = Genome.from_index(i)
        a = prune_mask(meta_log_score(lin.weight, x, g, rho), 0.5, Pattern())
        b = prune_mask(meta_log_score(lin.weight, x, g.row_canonical(), rho), 0.5, Pattern())
        assert torch.equal(a, b), g
