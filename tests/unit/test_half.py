"""bf16 models prune as fp32 ones do, up to documented near-ties.

A bf16 model keeps its weights in bf16 on the device while statistics, Hessians, scores and the
KL are float32 (optishear.methods.stats, optishear.search.fitness). Its activations are computed in
bf16 (8 bits of mantissa), so a weight whose score sits within a few bf16 steps of its row's
threshold may fall on the other side: those are the near-ties below, and nothing else differs.
"""

from __future__ import annotations

import copy

import pytest
import torch
from tiny_models import VOCAB, build_tiny

from optishear.config import PruneConfig, SearchConfig
from optishear.core.genome import Genome
from optishear.core.patterns import Pattern
from optishear.methods.metrics import wanda_score
from optishear.model.blocks import capture_block_inputs, iter_linears
from optishear.model.hf import torch_dtype
from optishear.recipe.candidates import Candidate
from optishear.recipe.prune import collect_dense_stats, prune_model
from optishear.search.fitness import FitnessEngine

# Relative distance from the threshold within which fp32 and bf16 may disagree: a few bf16
# rounding steps (2^-8 each) of the activations the statistics sum.
NEAR_TIE = 0.05


def _pair() -> tuple[torch.nn.Module, torch.nn.Module]:
    """A bf16 model and an fp32 model with exactly the same (bf16-representable) weights."""
    half = build_tiny("llama", layers=3).to(torch.bfloat16)
    return copy.deepcopy(half).float(), half


def _ids() -> torch.Tensor:
    return torch.randint(0, VOCAB, (8, 32), generator=torch.Generator().manual_seed(2))


@pytest.mark.parametrize("pattern", ["unstructured", "2:4"])
def test_bf16_wanda_masks_match_fp32_but_for_near_ties(pattern) -> None:
    full, half = _pair()
    ids = _ids()
    stats = collect_dense_stats(full, capture_block_inputs(full, ids, 4))
    dense = {(b, n): lin.weight.detach().clone() for b, n, lin in iter_linears(full)}
    config = PruneConfig(method="wanda", sparsity=0.5, pattern=pattern, stats="dense")
    prune_model(full, ids, config)
    prune_model(half, ids, config)
    assert half.dtype == torch.bfloat16
    differ = total = 0
    for (b, name, a), (_, _, h) in zip(iter_linears(full), iter_linears(half), strict=True):
        mf, mh = a.weight == 0, h.weight == 0
        total += mf.numel()
        if torch.equal(mf, mh):
            continue
        # the fp32 score of every disagreeing weight is within NEAR_TIE of its group's threshold
        score = wanda_score(dense[b, name], stats[b][name].act_sq)
        p = Pattern.parse(pattern)
        groups = score.view(score.shape[0], -1, p.m) if p.structured else score.unsqueeze(1)
        keep = (~mf).view(groups.shape)
        lowest_kept = groups.masked_fill(~keep, float("inf")).amin(-1, keepdim=True)
        highest_pruned = groups.masked_fill(keep, float("-inf")).amax(-1, keepdim=True)
        threshold = ((lowest_kept + highest_pruned) / 2).expand_as(groups).reshape(score.shape)
        off = mf != mh
        rel = ((score - threshold).abs() / threshold.abs().clamp_min(1e-12))[off]
        assert float(rel.max()) < NEAR_TIE, (b, name)
        differ += int(off.sum())
    assert differ / total < 0.01


def test_a_bf16_engine_scores_as_fp32_within_rounding() -> None:
    full, half = _pair()
    ids = _ids()
    engines = [FitnessEngine(m, ids, Pattern(), batch_size=4) for m in (full, half)]
    for genome in (Genome(), Genome.parse("f1=sqrt,beta=inv_col_sum")):
        cand = Candidate(genome, (0.5,) * 3)
        a, b = (e.evaluate(cand) for e in engines)
        assert a.sparsity == b.sparsity == 0.5
        assert b.error == pytest.approx(a.error, rel=0.1)
    # statistics and the reference stay float32 in a bf16 engine
    assert all(s.dtype == torch.float32 for s in engines[1].act_sq)
    assert engines[1].reference.dtype == torch.float32


@pytest.mark.parametrize(
    ("caps", "expected"),
    [
        ({"avx2": True}, torch.float32),  # emulated bf16: several times slower than float32
        ({"avx2": True, "avx512_bf16": True}, torch.bfloat16),
        ({"avx2": True, "amx_bf16": True}, torch.bfloat16),
        ({"neon": True, "bf16": True}, torch.bfloat16),
    ],
)
def test_auto_dtype_is_bf16_only_where_the_cpu_computes_it(caps, expected, monkeypatch) -> None:
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: caps)
    assert torch_dtype("auto", torch.device("cpu")) == expected
    assert torch_dtype("float32", torch.device("cpu")) == torch.float32
    assert torch_dtype("bfloat16", torch.device("cpu")) == torch.bfloat16


def test_auto_dtype_is_accepted_by_every_config() -> None:
    assert SearchConfig(model="m", dtype="auto").dtype == "auto"
    with pytest.raises(ValueError, match="dtype"):
        SearchConfig(model="m", dtype="bf16")
