import pytest
import torch
from pydantic import ValidationError
from tiny_models import ARCHS, build_tiny

from optishear.config import PlanConfig, PruneConfig, config_error
from optishear.core.errors import ConfigError, UnknownMethodError
from optishear.core.genome import Genome
from optishear.core.patterns import Pattern
from optishear.methods.registry import build_method
from optishear.methods.sparsegpt import sparsegpt_prune
from optishear.model.blocks import decoder_blocks, iter_linears, linear_sublayers
from optishear.recipe.prune import prune_model
from optishear.search.scoring_stats import baseline_stats, layer_stats

PATTERNS = [Pattern(), Pattern(2, 4), Pattern(4, 8)]


def _row_zeros(W: torch.Tensor) -> torch.Tensor:
    return (W == 0).sum(dim=1)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("method", ["magnitude", "wanda", "ria", "sparsegpt", "meta"])
@pytest.mark.parametrize("pattern", PATTERNS, ids=str)
def test_exact_sparsity_every_layer(arch, method, pattern, calib_ids) -> None:
    model = build_tiny(arch)
    genome = Genome.parse("f1=sqrt,beta=inv_col_sum") if method == "meta" else None
    config = PruneConfig(method=method, sparsity=0.5, pattern=pattern, genome=genome, batch_size=4)
    report = prune_model(model, calib_ids, config)
    assert report.achieved == 0.5
    assert len(report.layers) == sum(1 for _ in iter_linears(model))
    for idx, name, lin in iter_linears(model):
        W = lin.weight
        layer = next(r for r in report.layers if r.block == idx and r.name == name)
        assert int((W == 0).sum()) == layer.pruned == W.numel() // 2
        if pattern.structured:
            groups = (W == 0).view(W.shape[0], -1, pattern.m).sum(-1)
            assert (groups == pattern.n).all()
        elif method in ("wanda", "ria", "meta"):
            assert (_row_zeros(W) == W.shape[1] // 2).all()


def test_owl_plan_meets_target_and_varies(calib_ids) -> None:
    model = build_tiny("llama", layers=4)
    report = prune_model(
        model, calib_ids, PruneConfig(method="wanda", sparsity=0.6, plan=PlanConfig(kind="owl"))
    )
    assert len(set(report.plan)) > 1
    assert max(report.plan) - min(report.plan) <= 2 * 0.08 + 1e-9
    assert sum(report.plan) / 4 == pytest.approx(0.6, abs=1e-9)
    # achieved = plan up to the rounding of k = round(ratio * d_in) per row
    assert report.achieved == pytest.approx(0.6, abs=1 / 32)
    for got, want in zip(report.block_sparsity(), report.plan, strict=True):
        assert got == pytest.approx(want, abs=1 / 32)


def test_explicit_plan(calib_ids) -> None:
    model = build_tiny("llama", layers=2)
    plan = PlanConfig(kind="explicit", block_sparsity=(0.25, 0.75))
    report = prune_model(model, calib_ids, PruneConfig(method="wanda", sparsity=0.5, plan=plan))
    assert report.block_sparsity() == [0.25, 0.75]
    with pytest.raises(ConfigError, match="not the target"):
        prune_model(
            build_tiny("llama"), calib_ids, PruneConfig(method="wanda", sparsity=0.4, plan=plan)
        )
    with pytest.raises(ConfigError, match="2 blocks"):
        prune_model(
            build_tiny("llama"),
            calib_ids,
            PruneConfig(
                method="wanda",
                sparsity=0.5,
                plan=PlanConfig(kind="explicit", block_sparsity=(0.5,) * 3),
            ),
        )


def _brute_force_wanda(model, ids, ratio):
    """Wanda by definition: hooks on a full forward for each block in turn, loops for scores."""
    blocks = decoder_blocks(model)
    for block in blocks:
        sq: dict[str, torch.Tensor] = {}

        def hook(name, _m, args, _out, sq=sq):
            x = args[0].reshape(-1, args[0].shape[-1])
            sq[name] = sq.get(name, 0) + (x**2).sum(0)

        lins = linear_sublayers(block)
        hs = [
            m.register_forward_hook(lambda m, a, o, n=n: hook(n, m, a, o)) for n, m in lins.items()
        ]
        with torch.no_grad():
            model(ids, use_cache=False)  # blocks before idx are already pruned
        for h in hs:
            h.remove()
        for name, lin in lins.items():
            W = lin.weight.data
            norms = sq[name].sqrt().tolist()
            k = round(W.shape[1] * ratio)
            for i in range(W.shape[0]):
                scores = [(abs(float(W[i, j])) * norms[j], j) for j in range(W.shape[1])]
                for _s, j in sorted(scores)[:k]:
                    W[i, j] = 0.0


def test_wanda_equals_brute_force(calib_ids) -> None:
    ours = build_tiny("llama")
    ref = build_tiny("llama")
    prune_model(ours, calib_ids, PruneConfig(method="wanda", sparsity=0.5, batch_size=8))
    _brute_force_wanda(ref, calib_ids, 0.5)
    for (_, name, a), (_, _, b) in zip(iter_linears(ours), iter_linears(ref), strict=True):
        assert torch.equal(a.weight == 0, b.weight == 0), name


@pytest.mark.parametrize("pattern", [Pattern(), Pattern(2, 4)], ids=str)
def test_sparsegpt_layer_error_below_wanda(pattern) -> None:
    model = build_tiny("llama", hidden=64)
    ids = torch.randint(0, 128, (16, 32), generator=torch.Generator().manual_seed(3))
    captured = {}
    lin = linear_sublayers(decoder_blocks(model)[1])["mlp.down_proj"]
    h = lin.register_forward_hook(lambda _m, a, _o: captured.setdefault("x", a[0].detach()))
    with torch.no_grad():
        model(ids, use_cache=False)
    h.remove()
    X = captured["x"].reshape(-1, lin.in_features)  # (tokens, d_in)
    W = lin.weight.detach().clone()
    H = 2 * X.T @ X / 16
    wanda = W.clone()
    score = W.abs() * (X**2).sum(0).sqrt()[None, :]
    from optishear.methods.masks import prune_mask

    wanda[prune_mask(score, 0.5, pattern)] = 0
    sgpt = W.clone()
    mask = sparsegpt_prune(sgpt, H, 0.5, pattern)
    assert int(mask.sum()) == W.numel() // 2
    assert torch.equal(mask, sgpt == 0)

    def err(V):
        return float(torch.linalg.norm(X @ (W - V).T))

    assert err(sgpt) < err(wanda)


def test_sparsegpt_fixed_mask_keeps_mask_and_lowers_error() -> None:
    gen = torch.Generator().manual_seed(0)
    X = torch.randn(256, 32, generator=gen) @ torch.randn(32, 32, generator=gen)
    W = torch.randn(16, 32, generator=gen)
    mask = torch.rand(16, 32, generator=gen) < 0.5
    masked = W.masked_fill(mask, 0)
    updated = W.clone()
    sparsegpt_prune(updated, X.T @ X, 0.5, Pattern(), fixed_mask=mask)
    assert torch.equal(updated == 0, mask)
    err = lambda V: float(torch.linalg.norm(X @ (W - V).T))
    assert err(updated) < err(masked)


def test_dense_stats_source_matches_sequential_on_first_block(calib_ids) -> None:
    a, b = build_tiny("llama"), build_tiny("llama")
    prune_model(a, calib_ids, PruneConfig(method="wanda", sparsity=0.5, stats="pruned"))
    prune_model(b, calib_ids, PruneConfig(method="wanda", sparsity=0.5, stats="dense"))
    la, lb = list(iter_linears(a)), list(iter_linears(b))
    # block 0 sees the same (dense) inputs either way; later blocks may differ
    for (i, _, x), (_, _, y) in zip(la, lb, strict=True):
        if i == 0:
            assert torch.equal(x.weight, y.weight)


def _config_message(**fields) -> str:
    with pytest.raises(ValidationError) as info:
        PruneConfig(**fields)
    return str(config_error(info.value))


def test_bad_configs() -> None:
    assert _config_message(method="foo").startswith("method: Input should be 'magnitude'")
    with pytest.raises(UnknownMethodError, match="unknown pruning method 'foo'"):
        build_method("foo")
    for bad in (0.0, 1.0, -0.1, 1.5):
        message = _config_message(method="wanda", sparsity=bad)
        assert message in (
            "sparsity: Input should be greater than 0",
            "sparsity: Input should be less than 1",
        )
    assert "prunes exactly 0.5" in _config_message(
        method="wanda", sparsity=0.6, pattern=Pattern(2, 4)
    )
    assert "uniform plan" in _config_message(
        method="wanda", sparsity=0.5, pattern=Pattern(2, 4), plan=PlanConfig(kind="owl")
    )
    assert "genome" in _config_message(method="wanda", genome=Genome())


def test_nm_not_dividing_layer_is_refused_before_pruning(calib_ids) -> None:
    model = build_tiny("llama", hidden=36, heads=2)  # 36 inputs: 2:4 fits, 4:8 does not
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ConfigError, match="4:8 does not divide layer"):
        prune_model(
            model, calib_ids, PruneConfig(method="wanda", sparsity=0.5, pattern=Pattern(4, 8))
        )
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize("pattern", [Pattern(), Pattern(2, 4)], ids=str)
@pytest.mark.parametrize("hessian", [False, True])
def test_baseline_stats_recorded_in_the_prune_equal_a_second_pass(
    pattern, hessian, calib_ids
) -> None:
    """The engine's Wanda-pruned statistics, recorded by the prune's own last run of each
    block, are those of a separate pass over the pruned model; the dense weights come back."""
    model = build_tiny("llama")
    layers = list(iter_linears(model))
    weights = [lin.weight.data for _, _, lin in layers]
    before = [w.clone() for w in weights]
    got = baseline_stats(model, calib_ids, layers, weights, pattern, 0.5, 4, hessian=hessian)
    for w, b in zip(weights, before, strict=True):
        assert torch.equal(w, b)
    config = PruneConfig(method="wanda", sparsity=0.5, pattern=pattern, batch_size=4)
    prune_model(model, calib_ids, config)
    want = layer_stats(model, calib_ids, layers, 4, hessian=hessian)
    assert len(got) == len(want) == len(layers)
    for g, w in zip(got, want, strict=True):
        assert (g.n_seqs, g.n_tokens) == (w.n_seqs, w.n_tokens)
        torch.testing.assert_close(g.sq_sum, w.sq_sum, rtol=1e-6, atol=0)
        assert g.xtx is None
        assert w.xtx is None
        if hessian:  # reduced to rho block by block, as the engine keeps them
            assert g.rho is not None
            assert w.rho is not None
            torch.testing.assert_close(g.rho, w.rho, rtol=1e-5, atol=1e-7)
