"""Held-out perplexity makes its logits a chunk of tokens at a time, and means the same."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from tiny_models import VOCAB, build_tiny

from optishear.config import EvaluationConfig
from optishear.evaluation import perplexity as evaluate
from optishear.evaluation.held_out import HeldOutComparison, HeldOutRow, gain_text


@pytest.mark.parametrize("arch", ["llama", "gemma3", "opt"])
def test_chunked_perplexity_equals_the_perplexity_of_whole_logits(arch, monkeypatch) -> None:
    model = build_tiny(arch)
    if arch == "gemma3":
        model.config.final_logit_softcapping = 5.0  # the cap is applied to every chunk
    stream = torch.randint(0, VOCAB, (400,), generator=torch.Generator().manual_seed(3))
    config = EvaluationConfig(seq_len=32, windows=6, batch_size=4)
    windows = evaluate.eval_windows(stream, config)
    with torch.no_grad():
        logits = model(windows, use_cache=False).logits[:, :-1].float()
    nll = F.cross_entropy(logits.reshape(-1, VOCAB), windows[:, 1:].reshape(-1))
    monkeypatch.setattr(evaluate, "_LOGIT_CHUNK_TOKENS", 7)  # chunks that split windows
    got = evaluate.perplexity(model, stream, config)
    assert got.n_tokens == 6 * 31
    assert got.perplexity == pytest.approx(math.exp(float(nll)), rel=1e-5)
    # each window's own mean NLL, whose mean is the whole mean
    per_window = F.cross_entropy(
        logits.reshape(-1, VOCAB), windows[:, 1:].reshape(-1), reduction="none"
    ).view(6, 31)
    assert got.window_nll == pytest.approx(per_window.mean(-1).tolist(), rel=1e-5)
    assert sum(got.window_nll) / 6 == pytest.approx(got.mean_nll, rel=1e-9)


def test_a_gain_carries_the_standard_error_of_its_paired_windows() -> None:
    def row(name: str, nll: list[float]) -> HeldOutRow:
        ppl = math.exp(sum(nll) / len(nll)) if nll else 8.0
        return HeldOutRow(name=name, perplexity=ppl, sparsity=0.5, prune_seconds=0, window_nll=nll)

    searched = [2.0, 2.1, 1.9, 2.2]
    wanda = [2.1, 2.3, 2.0, 2.2]  # differences -0.1, -0.2, -0.1, 0.0: mean -0.1
    cmp = HeldOutComparison(
        rows=(row("searched", searched), row("wanda", wanda), row("sparsegpt", [])),
        protocol={},
        seconds=0.0,
    )
    assert cmp.gains["wanda"] == pytest.approx(math.exp(-0.1) - 1)
    se = math.sqrt(sum((d + 0.1) ** 2 for d in (-0.1, -0.2, -0.1, 0.0)) / 3 / 4)
    assert cmp.gain_errors == {"wanda": pytest.approx(math.exp(-0.1) * se)}  # none without windows
    assert gain_text(cmp.gains["wanda"], "wanda", cmp.gain_errors["wanda"]) == (
        "-9.5% +- 3.7% vs wanda"
    )
