"""Held-out perplexity over fixed, non-overlapping windows of a token stream."""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from optishear.config import EvaluationConfig
from optishear.errors import DataError


@dataclass(frozen=True, slots=True)
class Perplexity:
    perplexity: float
    mean_nll: float
    n_windows: int
    n_tokens: int  # predicted tokens (each window predicts seq_len - 1)
    seq_len: int
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def eval_windows(stream: Tensor, config: EvaluationConfig) -> Tensor:
    """(n_windows, seq_len): the first windows of the stream, back to back."""
    n = stream.numel() // config.seq_len
    n = min(n, config.windows)
    if n == 0:
        raise DataError(
            f"evaluation text has {stream.numel()} tokens, fewer than one {config.seq_len}-token "
            "window"
        )
    return stream[: n * config.seq_len].view(n, config.seq_len)


@torch.no_grad()
def perplexity(model: nn.Module, stream: Tensor, config: EvaluationConfig) -> Perplexity:
    """exp(mean next-token NLL) over every predicted token of the evaluation windows."""
    start = time.perf_counter()
    windows = eval_windows(stream, config)
    device = next(model.parameters()).device
    total_nll = 0.0
    total_tokens = 0
    for i in range(0, windows.shape[0], config.batch_size):
        ids = windows[i : i + config.batch_size].to(device)
        logits = model(ids, use_cache=False).logits  # (b, seq, vocab)
        nll = F.cross_entropy(
            logits[:, :-1].reshape(-1, logits.shape[-1]).float(),
            ids[:, 1:].reshape(-1),
            reduction="sum",
        )
        total_nll += float(nll)
        total_tokens += ids[:, 1:].numel()
    mean = total_nll / total_tokens
    return Perplexity(
        math.exp(mean),
        mean,
        windows.shape[0],
        total_tokens,
        config.seq_len,
        time.perf_counter() - start,
    )
