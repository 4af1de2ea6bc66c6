"""Held-out perplexity makes its logits a chunk of tokens at a time, and means the same."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from tiny_models import VOCAB, build_tiny

from optishear.config import EvaluationConfig
from optishear.evaluation import perplexity as evaluate


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
