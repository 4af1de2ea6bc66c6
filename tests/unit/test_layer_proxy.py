"""The screen's layer-wise proxy: the engine's masks on sampled rows, their output error."""

import math

import pytest
import torch
from pydantic import ValidationError
from tiny_models import tiny_engine

from optishear.config import SearchConfig
from optishear.core.genome import WANDA_GENOME, Genome
from optishear.core.patterns import Pattern
from optishear.methods.masks import prune_mask
from optishear.methods.meta import log_score_terms, meta_log_score
from optishear.recipe.candidates import Candidate

# alpha with a column coefficient: a sampled row's score needs its whole layer's
COL = Genome.parse("f1=sqrt,f2=log,alpha=inv_row_col_sum,beta=inv_col_sum,h=sqrt_rho")


@pytest.mark.parametrize("pattern", [Pattern(), Pattern(2, 4)])
def test_sampled_rows_are_masked_as_the_engine_masks_them(pattern: Pattern) -> None:
    engine, _, _ = tiny_engine(pattern)
    engine.evaluate_layers(Candidate(COL, (0.5,) * engine.n_blocks))
    proxy = engine._proxy
    assert proxy is not None
    for pos, (rows, idx) in enumerate(zip(proxy.layers, proxy.index, strict=True)):
        whole = meta_log_score(engine.dense[pos], engine.act_sq[pos], COL, engine.rho[pos])
        mask = prune_mask(whole, 0.5, pattern)[idx]
        assert idx.numel() == min(32, engine.dense[pos].shape[0])
        part = rows.alpha_term("inv_row_col_sum", idx) + log_score_terms(
            rows.W.abs(), engine.act_sq[pos], COL, engine.rho[pos]
        )
        torch.testing.assert_close(part, whole[idx])
        assert torch.equal(prune_mask(part, 0.5, pattern), mask)


def test_the_error_is_the_geometric_mean_of_the_layers_relative_output_errors() -> None:
    engine, model, ids = tiny_engine()
    cand = Candidate(WANDA_GENOME, (0.5,) * engine.n_blocks)
    got = engine.evaluate_layers(cand)
    proxy = engine._proxy
    assert proxy is not None
    # each layer's inputs are the ones it sees in the dense model (the first 256 tokens: all 8
    # x 24 validation tokens here)
    seen = {}
    lins = [lin for _, _, lin in engine.layers]
    hooks = [
        lin.register_forward_pre_hook(lambda m, a, p=p: seen.__setitem__(p, a[0].reshape(-1, a[0].shape[-1])))
        for p, lin in enumerate(lins)
    ]  # fmt: skip
    with torch.no_grad():
        model(ids, use_cache=False)
    for h in hooks:
        h.remove()
    logs = []
    for pos, (rows, idx) in enumerate(zip(proxy.layers, proxy.index, strict=True)):
        torch.testing.assert_close(rows.X, seen[pos].float())
        W = engine.dense[pos]
        mask = prune_mask(meta_log_score(W, engine.act_sq[pos], WANDA_GENOME), 0.5, Pattern())
        X = seen[pos].float()
        err = ((W * mask)[idx] @ X.T).square().sum() / (W[idx] @ X.T).square().sum()
        logs.append(math.log(float(err)))
    assert got.error == pytest.approx(math.exp(sum(logs) / len(logs)), rel=1e-5)
    assert got.sparsity == pytest.approx(0.5)
    assert (got.n_samples, got.n_tokens) == (0, 0)
    # more sparsity, more error; a dense plan, none to speak of
    assert (
        engine.evaluate_layers(Candidate(WANDA_GENOME, (0.7,) * engine.n_blocks)).error > got.error
    )
    assert engine.evaluate_layers(Candidate(WANDA_GENOME, (0.0,) * engine.n_blocks)).error < 1e-9
    # the engine's model is untouched: a full evaluation is what it was
    assert engine.evaluate(cand).error == pytest.approx(engine.evaluate(cand).error)


@pytest.mark.parametrize(
    ("rungs", "message"),
    [
        ("1x32,layers", "can only come first"),
        ("layers", "a full-fidelity rung must follow it"),
        ("layers,layers,1x8", "can only come first"),
        ("lawyers,1x8", "a screening rung is 'layers' or"),
    ],
)
def test_the_layer_rung_comes_first_and_is_followed(rungs: str, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        SearchConfig(model="m", screen={"rungs": rungs})
    ok = SearchConfig(model="m", screen={"rungs": "Layers, 1x32"})
    assert ok.screen.rungs == ((0, 0), (1, 32))
    assert ok.model_dump(mode="json")["screen"]["rungs"] == "layers,1x32"
    assert SearchConfig.model_validate(ok.model_dump(mode="json")) == ok
